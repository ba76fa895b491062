# postdeploy: Event Grid refuses a subscription to a function that is not deployed yet, so the first provision
# creates the vaults' system topics without subscriptions. Now that the code is deployed, provision once more with
# the subscriptions (EVENT_GRID_WIRED=true); later runs of azd up create them in the first pass.
$ErrorActionPreference = 'Stop'

if ($env:EVENT_GRID_WIRED -eq 'true') {
    exit 0
}

azd env set EVENT_GRID_WIRED true
# The app indexes its functions a little after the package lands: retry while Event Grid cannot find them yet.
for ($attempt = 1; $attempt -le 5; $attempt++) {
    azd provision --no-prompt
    if ($LASTEXITCODE -eq 0) {
        exit 0
    }
    Start-Sleep -Seconds 30
}
Write-Error "keyhealth: Event Grid subscriptions not created; run 'azd provision' again once the app is up"
exit 1
