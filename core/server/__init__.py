"""The HTTP service: FastAPI routes, the request scheduler and the Gradio UI."""
