"""OpenAI-compatible HTTP server and chat page for run dirs, exports and models."""
