# Reference "worker" image: the shared workload tree running /opt/votingapp/worker.py.
ARG BASE
FROM ${BASE}
ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 PYTHONUNBUFFERED=1
WORKDIR /opt/votingapp
ENTRYPOINT ["/usr/bin/tini", "--"]
CMD ["python3", "/opt/votingapp/worker.py"]
