# Observation of one host: prints one JSON document on stdout.
#   $1  value of the votingstack.dev/stack label
#   $2  tier (database | backend | frontend): which readiness probes to run
#
# {"instance": "i-..." (when the host can tell), "docker": "running|missing|down", "docker_why": "...",
#  "list_error": "..." (when listing containers failed),
#  "containers": [{"name", "image", "image_id", "state", "exit_code", "labels"}],
#  "probes": [{"name", "ok", "detail"}]}

vs_stack=$1
vs_tier=$2

# Which EC2 instance answers at this address, when the host can tell: a
# hostname that is an instance id, else the Nitro DMI asset tag.
vs_instance=$(hostname 2>/dev/null)
case "$vs_instance" in
  i-[0-9a-f]*) ;;
  *) vs_instance=$(cat /sys/devices/virtual/dmi/id/board_asset_tag 2>/dev/null) ;;
esac
case "$vs_instance" in
  i-[0-9a-f]*) vs_instance=$(printf '%s' "$vs_instance" | tr -cd 'a-z0-9-') ;;
  *) vs_instance= ;;
esac

vs_find_docker

printf '{"instance":"%s","docker":"%s","docker_why":"%s","containers":[' "$vs_instance" "$DOCKER_STATE" "$DOCKER_WHY"
vs_list_error=
if [ "$DOCKER_STATE" = running ]; then
  if vs_ids=$(vs_timeout 30 $DOCKER ps -aq --no-trunc --filter "label=votingstack.dev/stack=$vs_stack" 2>&1 </dev/null); then
    if [ -n "$vs_ids" ]; then
      # a container removed between the two calls is skipped (its error goes to /dev/null)
      # shellcheck disable=SC2086
      vs_timeout 30 $DOCKER inspect --format '{"name":{{json .Name}},"image":{{json .Config.Image}},"image_id":{{json .Image}},"state":{{json .State.Status}},"exit_code":{{.State.ExitCode}},"labels":{{json .Config.Labels}}}' $vs_ids 2>/dev/null </dev/null \
        | awk 'NR > 1 { printf "," } { printf "%s", $0 }'
    fi
  else
    vs_list_error=$(vs_clean "$vs_ids")
  fi
fi
printf '],"list_error":"%s","probes":[' "$vs_list_error"

# vs_probe NAME EXPECTED COMMAND...: one probe entry; ok when COMMAND prints EXPECTED.
vs_probe_sep=
vs_probe() {
  vs_name=$1
  vs_want=$2
  shift 2
  vs_got=$(vs_timeout 10 "$@" 2>&1 </dev/null)
  vs_rc=$?
  vs_first=$(printf '%s\n' "$vs_got" | head -n 1 | tr -d '\r ')
  if [ "$vs_rc" = 0 ] && [ "$vs_first" = "$vs_want" ]; then
    vs_ok=true
  else
    vs_ok=false
  fi
  printf '%s{"name":"%s","ok":%s,"detail":"%s"}' "$vs_probe_sep" "$vs_name" "$vs_ok" "$(vs_clean "$vs_got")"
  vs_probe_sep=,
}

if [ "$DOCKER_STATE" = running ]; then
  case "$vs_tier" in
    database)
      # shellcheck disable=SC2086
      vs_probe db 1 $DOCKER exec db psql -U postgres -tAc 'SELECT 1'
      ;;
    backend)
      # shellcheck disable=SC2086
      vs_probe redis PONG $DOCKER exec redis redis-cli ping
      ;;
  esac
fi
printf ']}\n'
