# Functions of the apply script (after common.sh). The generated part calls
# `vs_step N` before each step; on failure it exits non-zero with the
# reason on stderr, and the operator reports step N.

vs_step() {
  printf 'step:%s\n' "$1"
}

vs_tmp=
trap 'rm -f $vs_tmp' EXIT

# Sets vs_file to a new file only the login user can read; it is removed
# when the script ends.
vs_private_file() {
  vs_file=$(mktemp "${TMPDIR:-/tmp}/votingstack.XXXXXX") || return 1
  vs_tmp="$vs_tmp $vs_file"
  chmod 0600 "$vs_file" || return 1
}

# vs_logged COMMAND...: runs COMMAND with its output in a file (a daemon
# started by COMMAND must not hold the exec's pipes open); shows the end
# of that output on stderr when COMMAND fails.
vs_logged() {
  vs_private_file || return 1
  vs_log=$vs_file
  "$@" >"$vs_log" 2>&1 </dev/null
  vs_rc=$?
  if [ "$vs_rc" = 0 ]; then
    return 0
  fi
  tail -n 15 "$vs_log" >&2
  echo "($* exited with $vs_rc)" >&2
  return "$vs_rc"
}

# Installs Docker from the distribution's packages (Debian, Ubuntu).
vs_install_docker() {
  if command -v docker >/dev/null 2>&1; then
    return 0
  fi
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "Docker is not installed and this host has no apt-get: only Debian and Ubuntu hosts can be provisioned" >&2
    return 1
  fi
  vs_logged vs_root env DEBIAN_FRONTEND=noninteractive apt-get update -q || return 1
  vs_logged vs_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q docker.io || return 1
  if ! command -v docker >/dev/null 2>&1; then
    echo "apt-get install docker.io succeeded but there is still no docker command" >&2
    return 1
  fi
}

# Enables and starts containerd and Docker.
vs_start_docker_once() {
  if [ -d /run/systemd/system ]; then
    # Ubuntu 24.04 can leave docker.socket failed after the package's
    # first start; clear that state and restart the socket with the service
    vs_root systemctl reset-failed docker.socket docker.service >/dev/null 2>&1 || true
    if systemctl cat containerd.service >/dev/null 2>&1; then
      vs_logged vs_root systemctl enable containerd.service || return 1
      vs_logged vs_root systemctl start containerd.service || return 1
    fi
    vs_logged vs_root systemctl enable docker.service || return 1
    if systemctl cat docker.socket >/dev/null 2>&1; then
      vs_logged vs_root systemctl enable docker.socket || return 1
      vs_logged vs_root systemctl restart docker.socket docker.service || return 1
    else
      vs_logged vs_root systemctl restart docker.service || return 1
    fi
  elif command -v service >/dev/null 2>&1; then
    vs_logged vs_root service docker start || return 1
  elif command -v systemctl >/dev/null 2>&1; then
    vs_logged vs_root systemctl start docker || return 1
  else
    echo "this host has neither systemd nor service(8): cannot start Docker" >&2
    return 1
  fi
}

# Starts Docker and waits for the engine. A start issued while an engine is
# still shutting down is a no-op for init scripts, so it is repeated every
# 5 s until the engine answers.
vs_start_docker() {
  vs_i=0
  while [ "$vs_i" -lt 60 ]; do
    if [ $((vs_i % 5)) = 0 ]; then
      vs_start_docker_once || return 1
    fi
    vs_find_docker
    if [ "$DOCKER_STATE" = running ]; then
      return 0
    fi
    sleep 1
    vs_i=$((vs_i + 1))
  done
  echo "Docker did not answer within 60 s of being started: $DOCKER_WHY" >&2
  return 1
}

vs_need_docker() {
  if [ "$DOCKER_STATE" = running ]; then
    return 0
  fi
  vs_find_docker
  if [ "$DOCKER_STATE" != running ]; then
    echo "the Docker engine does not answer ($DOCKER_STATE): $DOCKER_WHY" >&2
    return 1
  fi
}
