"""Azure Functions app (Python v2 model): Key Vault events, the 5-minute poll, alert delivery, and status over HTTP."""

import azure.functions as func

from monitor.entry import functions_host as host

app = func.FunctionApp(http_auth_level=func.AuthLevel.FUNCTION)


@app.function_name("keyvault_events")
@app.event_grid_trigger(arg_name="event")
async def keyvault_events(event: func.EventGridEvent) -> None:
    await host.on_event(event)


@app.function_name("poll")
@app.timer_trigger(schedule="%KEYHEALTH_POLL_SCHEDULE%", arg_name="timer", run_on_startup=False)
async def poll(timer: func.TimerRequest) -> None:
    await host.on_timer(timer)


@app.function_name("deliver_alerts")
@app.timer_trigger(schedule="%KEYHEALTH_DELIVERY_SCHEDULE%", arg_name="timer", run_on_startup=False)
async def deliver_alerts(timer: func.TimerRequest) -> None:
    await host.on_delivery_timer(timer)


@app.function_name("fleet_status")
@app.route(route="status", methods=["GET"])
async def fleet_status(req: func.HttpRequest) -> func.HttpResponse:
    return await host.status(None)


@app.function_name("namespace_status")
@app.route(route="status/{namespace}", methods=["GET"])
async def namespace_status(req: func.HttpRequest) -> func.HttpResponse:
    return await host.status(req.route_params.get("namespace"))
