// Azure Monitor metric alerts on the metrics keyhealth emits (monitor/app/telemetry.py), to the given action group.
// The metrics reach Application Insights as custom metrics once the app exports to Azure Monitor (see
// infra/README.md); until a metric has arrived the rule has nothing to evaluate, so validation is skipped.
// One log alert watches the monitor itself: it fires on the absence of completed polls, so a dead app alerts.
param tags object
param appInsightsName string

@description('Action group to notify; empty: the rules fire without notifying anyone.')
param actionGroupId string

@description('Alert when a namespace is predicted to go Revoked within this many days.')
param revocationAlertDays int

@description('Alert when more than this many alert deliveries were retried within an hour.')
param retriedDeliveriesPerHour int = 3

resource appInsights 'Microsoft.Insights/components@2020-02-02' existing = {
  name: appInsightsName
}

// Application Insights keeps custom metrics in its own namespace.
var customMetrics = 'azure.applicationinsights'
var notify = [
  {
    actionGroupId: actionGroupId
  }
]
var actions = empty(actionGroupId) ? [] : notify

// The poll runs every 5 minutes (KEYHEALTH_POLL_SCHEDULE's default); three periods without one are an outage.
var pollPeriodMinutes = 5
var missedPolls = 3

resource revocationSoon 'Microsoft.Insights/metricAlerts@2018-03-01' = {
  name: 'keyhealth-revocation-within-${revocationAlertDays}-days'
  location: 'global'
  tags: tags
  properties: {
    description: 'A Service Bus namespace is predicted to go Revoked within ${revocationAlertDays} days (or is revoked now): its customer-managed keys stop being usable. One alert per namespace.'
    severity: 1
    enabled: true
    scopes: [
      appInsights.id
    ]
    evaluationFrequency: 'PT5M'
    windowSize: 'PT15M'
    autoMitigate: true
    criteria: {
      'odata.type': 'Microsoft.Azure.Monitor.SingleResourceMultipleMetricCriteria'
      allOf: [
        {
          criterionType: 'StaticThresholdCriterion'
          name: 'revocation-seconds'
          metricNamespace: customMetrics
          metricName: 'keyhealth.namespace.revocation.seconds'
          dimensions: [
            {
              name: 'namespace'
              operator: 'Include'
              values: [
                '*'
              ]
            }
          ]
          operator: 'LessThan'
          threshold: revocationAlertDays * 86400
          timeAggregation: 'Minimum'
          skipMetricValidation: true
        }
      ]
    }
    actions: actions
  }
}

resource monitorBlind 'Microsoft.Insights/metricAlerts@2018-03-01' = {
  name: 'keyhealth-monitor-blind'
  location: 'global'
  tags: tags
  properties: {
    description: 'The monitor cannot judge some namespaces (its own access denied, a vault or ARM unreachable): they could be going Revoked unseen.'
    severity: 2
    enabled: true
    scopes: [
      appInsights.id
    ]
    evaluationFrequency: 'PT5M'
    windowSize: 'PT15M'
    autoMitigate: true
    criteria: {
      'odata.type': 'Microsoft.Azure.Monitor.SingleResourceMultipleMetricCriteria'
      allOf: [
        {
          criterionType: 'StaticThresholdCriterion'
          name: 'blind-namespaces'
          metricNamespace: customMetrics
          metricName: 'keyhealth.monitor.blind'
          operator: 'GreaterThan'
          threshold: 0
          timeAggregation: 'Maximum'
          skipMetricValidation: true
        }
      ]
    }
    actions: actions
  }
}

resource deliveryFailing 'Microsoft.Insights/metricAlerts@2018-03-01' = {
  name: 'keyhealth-alert-delivery-failing'
  location: 'global'
  tags: tags
  properties: {
    description: 'An alert sink keeps refusing keyhealth\'s alerts (deliveries retried more than ${retriedDeliveriesPerHour} times in an hour). One alert per sink.'
    severity: 2
    enabled: true
    scopes: [
      appInsights.id
    ]
    evaluationFrequency: 'PT15M'
    windowSize: 'PT1H'
    autoMitigate: true
    criteria: {
      'odata.type': 'Microsoft.Azure.Monitor.SingleResourceMultipleMetricCriteria'
      allOf: [
        {
          criterionType: 'StaticThresholdCriterion'
          name: 'retried-deliveries'
          metricNamespace: customMetrics
          metricName: 'keyhealth.alerts.deliveries'
          dimensions: [
            {
              name: 'outcome'
              operator: 'Include'
              values: [
                'retried'
              ]
            }
            {
              name: 'sink'
              operator: 'Include'
              values: [
                '*'
              ]
            }
          ]
          operator: 'GreaterThan'
          threshold: retriedDeliveriesPerHour
          timeAggregation: 'Total'
          skipMetricValidation: true
        }
      ]
    }
    actions: actions
  }
}

resource deliveryGivenUp 'Microsoft.Insights/metricAlerts@2018-03-01' = {
  name: 'keyhealth-alert-undeliverable'
  location: 'global'
  tags: tags
  properties: {
    description: 'keyhealth gave up on an alert after KEYHEALTH_ALERT_GIVE_UP_HOURS of refusals: someone was not told. One alert per sink.'
    severity: 1
    enabled: true
    scopes: [
      appInsights.id
    ]
    evaluationFrequency: 'PT15M'
    windowSize: 'PT1H'
    autoMitigate: true
    criteria: {
      'odata.type': 'Microsoft.Azure.Monitor.SingleResourceMultipleMetricCriteria'
      allOf: [
        {
          criterionType: 'StaticThresholdCriterion'
          name: 'undeliverable-alerts'
          metricNamespace: customMetrics
          metricName: 'keyhealth.alerts.deliveries'
          dimensions: [
            {
              name: 'outcome'
              operator: 'Include'
              values: [
                'undeliverable'
              ]
            }
            {
              name: 'sink'
              operator: 'Include'
              values: [
                '*'
              ]
            }
          ]
          operator: 'GreaterThan'
          threshold: 0
          timeAggregation: 'Total'
          skipMetricValidation: true
        }
      ]
    }
    actions: actions
  }
}

// A dead man's switch: counts the minutes in which some instance completed a poll (keyhealth.polls with outcome
// ok; Azure Monitor receives counters as deltas, so a minute without polls sends nothing) over the last three
// periods. The summarize without grouping returns one row even from no data, so silence gives 0 and fires: a
// metric rule would see no data and stay quiet. A blind poll (outcome blind) does not count: it saw nothing.
resource monitorStopped 'Microsoft.Insights/scheduledQueryRules@2022-06-15' = {
  name: 'keyhealth-monitor-not-polling'
  location: appInsights.location
  tags: tags
  kind: 'LogAlert'
  properties: {
    displayName: 'keyhealth-monitor-not-polling'
    description: 'No keyhealth poll completed in the last ${missedPolls * pollPeriodMinutes} minutes (${missedPolls} poll periods): the monitor is down, stuck or cannot reach Azure, and nothing is watching the namespaces\' keys.'
    severity: 1
    enabled: true
    scopes: [
      appInsights.id
    ]
    evaluationFrequency: 'PT${pollPeriodMinutes}M'
    windowSize: 'PT${missedPolls * pollPeriodMinutes}M'
    autoMitigate: true
    criteria: {
      allOf: [
        {
          query: 'customMetrics | where timestamp > ago(${missedPolls * pollPeriodMinutes}m) | where name == "keyhealth.polls" and tostring(customDimensions.outcome) == "ok" and valueSum > 0 | summarize completedPolls = count()'
          timeAggregation: 'Total'
          metricMeasureColumn: 'completedPolls'
          operator: 'LessThan'
          threshold: 1
          failingPeriods: {
            numberOfEvaluationPeriods: 1
            minFailingPeriodsToAlert: 1
          }
        }
      ]
    }
    actions: {
      actionGroups: empty(actionGroupId) ? [] : [
        actionGroupId
      ]
    }
  }
}
