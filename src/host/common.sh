# Start of every script the operator runs on a host (POSIX sh).
#
# vs_find_docker sets:
#   DOCKER        how to call the Docker CLI: `docker`, or `sudo -n docker`
#                 when the login user is not in the docker group
#   DOCKER_STATE  running | missing | down
#   DOCKER_WHY    why the engine does not answer (one line)

# One line of diagnostic text, safe inside a JSON string: no quotes,
# backslashes or control characters, at most 400 bytes.
vs_clean() {
  printf '%s' "$1" | tr '\n\t\r"\\' "   ''" | tr -d '\000-\037' | cut -c1-400
}

# vs_timeout SECONDS COMMAND...: COMMAND, killed after SECONDS when
# coreutils' timeout is there.
vs_timeout() {
  if command -v timeout >/dev/null 2>&1; then
    timeout "$@"
  else
    shift
    "$@"
  fi
}

vs_find_docker() {
  DOCKER=docker
  DOCKER_WHY=
  if ! command -v docker >/dev/null 2>&1; then
    DOCKER_STATE=missing
    return 0
  fi
  if vs_out=$(vs_timeout 20 docker version --format '{{.Server.Version}}' 2>&1 </dev/null); then
    DOCKER_STATE=running
    return 0
  fi
  if [ "$(id -u)" != 0 ] && command -v sudo >/dev/null 2>&1 && sudo -n true >/dev/null 2>&1 </dev/null; then
    if vs_out=$(vs_timeout 20 sudo -n docker version --format '{{.Server.Version}}' 2>&1 </dev/null); then
      DOCKER="sudo -n docker"
      DOCKER_STATE=running
      return 0
    fi
  fi
  DOCKER_STATE=down
  DOCKER_WHY=$(vs_clean "$(printf '%s\n' "$vs_out" | grep -v '^[[:space:]]*$' | tail -n 2)")
}

# vs_root COMMAND...: COMMAND as root (sudo -n unless already root).
vs_root() {
  if [ "$(id -u)" = 0 ]; then
    "$@"
  else
    sudo -n "$@"
  fi
}
