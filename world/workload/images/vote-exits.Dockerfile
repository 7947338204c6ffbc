# A broken "vote" release for the update tests: it exits at once with an
# error, as an image with a missing module would.
ARG BASE
FROM ${BASE}
ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 PYTHONUNBUFFERED=1
WORKDIR /opt/votingapp
EXPOSE 80
ENTRYPOINT ["/usr/bin/tini", "--"]
CMD ["python3", "-c", "import sys; print('Traceback (most recent call last):', file=sys.stderr); print(\"ModuleNotFoundError: No module named 'flask_missing'\", file=sys.stderr); sys.exit(1)"]
