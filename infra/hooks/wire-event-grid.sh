#!/bin/sh
# postdeploy: Event Grid refuses a subscription to a function that is not deployed yet, so the first provision
# creates the vaults' system topics without subscriptions. Now that the code is deployed, provision once more with
# the subscriptions (EVENT_GRID_WIRED=true); later runs of azd up create them in the first pass.
set -eu

if [ "${EVENT_GRID_WIRED:-false}" = "true" ]; then
    exit 0
fi

azd env set EVENT_GRID_WIRED true
# The app indexes its functions a little after the package lands: retry while Event Grid cannot find them yet.
attempt=1
until azd provision --no-prompt; do
    if [ "$attempt" -ge 5 ]; then
        echo "keyhealth: Event Grid subscriptions not created; run 'azd provision' again once the app is up" >&2
        exit 1
    fi
    attempt=$((attempt + 1))
    sleep 30
done
