# ollama-pull-exporter image: the wheel is built in a throwaway stage and installed into a
# venv in a slim Python image; the exporter runs as an unprivileged user.
#   docker build -t ollama-pull-exporter .
#   docker run -p 127.0.0.1:11435:11435 -v "$PWD/config.yaml:/etc/ollama-pull-exporter/config.yaml:ro" \
#     ollama-pull-exporter
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY exporter/ exporter/
COPY ollama_sim/ ollama_sim/
RUN python -m pip wheel --no-cache-dir --no-deps --wheel-dir /dist .

FROM ${PYTHON_IMAGE}
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
COPY --from=build /dist/ /tmp/dist/
RUN python -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-cache-dir /tmp/dist/*.whl \
    && rm -rf /tmp/dist \
    && useradd --system --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin exporter \
    && mkdir -p /etc/ollama-pull-exporter /var/lib/ollama-pull-exporter \
    && chown exporter:exporter /var/lib/ollama-pull-exporter
# /var/lib/ollama-pull-exporter is writable for --storage.path; mount a volume there to keep
# last-run results across restarts.
USER 10001:10001
EXPOSE 11435
# No curl in slim images: the venv's Python does the probe. It reads the exporter's own flags
# (PID 1's command line), so it asks /-/healthy where and how the exporter listens: the port of
# --web.listen-address, https and basic auth from --web.config.file. Nothing to override.
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD ["python", "-m", "exporter.app.healthcheck"]
ENTRYPOINT ["ollama-pull-exporter"]
CMD ["--config.file=/etc/ollama-pull-exporter/config.yaml"]
