# userapi: one stateless process per container; scale by running more of them
# (compose.yaml runs several behind a load balancer). Build: docker build -t userapi .
ARG PYTHON_VERSION=3.11

# --- build: a virtualenv holding the app and its dependencies, from wheels ------------
FROM python:${PYTHON_VERSION}-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/userapi
WORKDIR /src
# .dockerignore lets only the project's sources in: never .env, data/, .venv/ or .git/.
COPY . .
# Binary wheels only for the dependencies: nothing is compiled, so no compiler is needed
# here, and none can reach the final image.
RUN /opt/userapi/bin/pip install --only-binary=:all: --no-binary=userapi .

# --- runtime: the slim base, the virtualenv, an unprivileged user ---------------------
FROM python:${PYTHON_VERSION}-slim
ENV PATH=/opt/userapi/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    ENV=production \
    DATA_DIR=/var/lib/userapi
RUN useradd --system --uid 10001 --user-group --home-dir /var/lib/userapi --create-home userapi
COPY --from=build /opt/userapi /opt/userapi
USER userapi
WORKDIR /var/lib/userapi

EXPOSE 8000
# Liveness from inside the container with the Python it already has (no curl in a slim
# image). /ready is for the load balancer: it also says whether the database answers.
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=2)"]
CMD ["userapi", "serve", "--host", "0.0.0.0", "--port", "8000"]
