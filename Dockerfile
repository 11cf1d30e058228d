# userapi: one stateless process per container; scale by running more of them.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app

COPY pyproject.toml README.md ./
COPY src ./src
COPY features ./features
COPY migrations ./migrations
RUN pip install . && useradd --system --home /app userapi && mkdir -p /app/data \
    && chown userapi /app/data
USER userapi

EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health')"
CMD ["userapi", "serve", "--host", "0.0.0.0", "--port", "8000"]
