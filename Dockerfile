FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY ocho ./ocho
COPY tools ./tools
COPY definitions ./definitions
# A regular install: no editable import hook slowing every tool's start-up.
RUN pip install --no-cache-dir . && useradd --create-home ocho
ENV OCHO_TOOLS_DIR=/app/tools
USER ocho
EXPOSE 9000
CMD ["ocho-gateway"]
