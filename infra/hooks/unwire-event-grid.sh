#!/bin/sh
# postdown: the app is gone, so the next provision must again start without Event Grid subscriptions.
set -eu
azd env set EVENT_GRID_WIRED false
