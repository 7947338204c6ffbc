# Streams the stack's die/stop/destroy container events, one JSON object a
# line, until the SSH channel closes (its stdin ends) or the engine stops.
#   $1  value of the votingstack.dev/stack label

vs_find_docker
if [ "$DOCKER_STATE" != running ]; then
  echo "the Docker engine does not answer ($DOCKER_STATE): $DOCKER_WHY" >&2
  exit 3
fi
exec 3<&0
# shellcheck disable=SC2086
$DOCKER events --filter "label=votingstack.dev/stack=$1" \
  --filter event=die --filter event=stop --filter event=destroy \
  --format '{{json .}}' </dev/null &
vs_events=$!
# the client closing the channel ends stdin: stop the stream with it
( cat <&3 >/dev/null 2>&1; kill "$vs_events" 2>/dev/null ) &
vs_watch=$!
exec 3<&-
printf 'ready\n'
wait "$vs_events"
vs_rc=$?
kill "$vs_watch" 2>/dev/null
exit "$vs_rc"
