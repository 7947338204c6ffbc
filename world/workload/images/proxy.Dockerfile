# Reference "proxy" image: nginx from the shared workload tree, as the
# official nginx image runs it; the operator gives it its configuration
# (see src/engine/proxy.rs). Has sh, wget and curl.
ARG BASE
FROM ${BASE}
ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8
EXPOSE 80 81
ENTRYPOINT ["/usr/bin/tini", "--"]
STOPSIGNAL SIGQUIT
CMD ["nginx", "-g", "daemon off;"]
