"""Mid-stream recovery: build the resume request and splice its continuation seamlessly."""
