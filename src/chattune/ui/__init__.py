"""The training web UI (`chattune ui`): routes in app.py, training processes in jobs.py, the page in static/."""
