"""The gateway's dashboard and HTTP API (FastAPI, Jinja2 pages, Chart.js)."""
