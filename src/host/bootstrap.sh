# The bootstrap steps the operator runs on a host in a shell: installing and
# starting Docker, reading the host's facts, mounting the data volume (every
# shell on a host, and why, is listed in src/host/mod.rs). POSIX sh; the
# launcher wraps this text in a function that is called on its last line,
# so a cut-off upload runs nothing.
#
#   $1 = facts    prints one line of JSON:
#                 {"instance": "i-..." (when the host can tell), "docker": "running|missing|down", "why": "..."}
#   $1 = install  installs Docker from the distribution's packages, then starts it;
#                 a host with neither Docker nor apt-get exits 4, its stderr
#                 starting with "unsupported operating system:" and what
#                 /etc/os-release says it is
#   $1 = start    starts Docker and waits until its API answers
#   $1 = mount-volume VOLUME_ID DIR SUBDIR FORMAT
#                 finds the attached EBS volume by its id, formats it only
#                 when it is blank (see vs_blank) and FORMAT is may-format,
#                 mounts it by UUID at DIR (and in /etc/fstab), makes
#                 DIR/SUBDIR; prints one line of JSON:
#                 {"device": "/dev/...", "uuid": "...", "formatted": true|false}
#                 A volume it will not format nor mount exits 3, its stderr
#                 starting with "data volume unusable:" and what was found.

# One line of diagnostic text, safe inside a JSON string.
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

# vs_root COMMAND...: COMMAND as root (sudo -n unless already root).
vs_root() {
  if [ "$(id -u)" = 0 ]; then
    "$@"
  else
    sudo -n "$@"
  fi
}

# Sets DOCKER_STATE (running | missing | down) and DOCKER_WHY.
vs_docker_state() {
  DOCKER_WHY=
  if ! command -v docker >/dev/null 2>&1; then
    DOCKER_STATE=missing
    return 0
  fi
  if vs_out=$(vs_timeout 20 docker version --format '{{.Server.Version}}' 2>&1 </dev/null); then
    DOCKER_STATE=running
    return 0
  fi
  if [ "$(id -u)" != 0 ] && command -v sudo >/dev/null 2>&1 \
    && vs_out=$(vs_timeout 20 sudo -n docker version --format '{{.Server.Version}}' 2>&1 </dev/null); then
    DOCKER_STATE=running
    return 0
  fi
  DOCKER_STATE=down
  DOCKER_WHY=$(vs_clean "$(printf '%s\n' "$vs_out" | grep -v '^[[:space:]]*$' | tail -n 2)")
}

# Which EC2 instance this is, when the host can tell: a hostname that is an
# instance id (cut at the first dot), else the Nitro DMI asset tag.
vs_instance() {
  vs_id=$(hostname 2>/dev/null | cut -d. -f1)
  case "$vs_id" in
    i-[0-9a-f]*) ;;
    *) vs_id=$(cat /sys/devices/virtual/dmi/id/board_asset_tag 2>/dev/null) ;;
  esac
  case "$vs_id" in
    i-[0-9a-f]*) printf '%s' "$vs_id" | tr -cd 'a-z0-9-' ;;
  esac
}

# vs_logged COMMAND...: runs COMMAND with its output in a private file (a
# daemon it starts must not hold the exec's pipes open); shows the end of
# that output on stderr when COMMAND fails.
vs_logged() {
  vs_log=$(mktemp "${TMPDIR:-/tmp}/votingstack.XXXXXX") || return 1
  "$@" >"$vs_log" 2>&1 </dev/null
  vs_rc=$?
  if [ "$vs_rc" != 0 ]; then
    tail -n 15 "$vs_log" >&2
    echo "($* exited with $vs_rc)" >&2
  fi
  rm -f "$vs_log"
  return "$vs_rc"
}

# Waits up to 300 s for cloud-init's first boot to finish (it may hold the
# package manager while it installs and upgrades).
vs_wait_for_cloud_init() {
  if command -v cloud-init >/dev/null 2>&1; then
    vs_timeout 300 cloud-init status --wait >/dev/null 2>&1 || true
  fi
}

# vs_apt ARGS...: apt-get ARGS as root, waiting up to 300 s for the dpkg
# lock (DPkg::Lock::Timeout) and, as apt-get update does not wait for its
# lists lock, retrying every 10 s for up to 300 s while another apt holds it.
vs_apt() {
  vs_try=0
  while :; do
    vs_log=$(mktemp "${TMPDIR:-/tmp}/votingstack.XXXXXX") || return 1
    vs_root env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 "$@" >"$vs_log" 2>&1 </dev/null
    vs_rc=$?
    if [ "$vs_rc" = 0 ]; then
      rm -f "$vs_log"
      return 0
    fi
    if grep -qi -e 'could not get lock' -e 'unable to lock' "$vs_log" && [ "$vs_try" -lt 30 ]; then
      rm -f "$vs_log"
      vs_try=$((vs_try + 1))
      sleep 10
      continue
    fi
    tail -n 15 "$vs_log" >&2
    echo "(apt-get $* exited with $vs_rc)" >&2
    rm -f "$vs_log"
    return "$vs_rc"
  done
}

# vs_os_name: what /etc/os-release (else /usr/lib/os-release) says the
# host runs: PRETTY_NAME, with ID and VERSION_ID; "unknown" without either file.
vs_os_name() {
  for vs_f in /etc/os-release /usr/lib/os-release; do
    if [ -r "$vs_f" ]; then
      (
        # shellcheck disable=SC1090
        . "$vs_f" 2>/dev/null
        printf '%s (ID=%s, VERSION_ID=%s)' "${PRETTY_NAME:-${NAME:-unknown}}" "${ID:-unknown}" "${VERSION_ID:-none}"
      )
      return 0
    fi
  done
  printf 'unknown (no /etc/os-release)'
}

vs_install_docker() {
  if command -v docker >/dev/null 2>&1; then
    return 0
  fi
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "unsupported operating system: $(vs_clean "$(vs_os_name)") has no Docker and no apt-get to install it;" \
      "only Debian and Ubuntu hosts (or hosts with Docker already installed) can be provisioned" >&2
    return 4
  fi
  vs_wait_for_cloud_init
  vs_apt update -q || return 1
  vs_apt install -y -q docker.io || return 1
  if ! command -v docker >/dev/null 2>&1; then
    echo "apt-get install docker.io succeeded but there is still no docker command" >&2
    return 1
  fi
}

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

# True while a Docker daemon process exists (running, starting or stopping),
# whether or not its API answers yet: systemd's view of docker.service,
# else a dockerd process, else the daemon's pid file.
vs_dockerd_alive() {
  if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
    case "$(systemctl show -p ActiveState --value docker.service 2>/dev/null)" in
      active | activating | reloading | deactivating) return 0 ;;
    esac
  fi
  if command -v pgrep >/dev/null 2>&1; then
    pgrep -x dockerd >/dev/null 2>&1
    return $?
  fi
  vs_pid=$(cat /var/run/docker.pid 2>/dev/null) && [ -n "$vs_pid" ] && [ -d "/proc/$vs_pid" ]
}

# vs_wait_docker SECONDS: polls once a second until Docker's API answers.
vs_wait_docker() {
  vs_w=0
  while [ "$vs_w" -lt "$1" ]; do
    vs_docker_state
    if [ "$DOCKER_STATE" = running ]; then
      return 0
    fi
    sleep 1
    vs_w=$((vs_w + 1))
  done
  return 1
}

# Starts Docker and waits for its API. A daemon that is there but does
# not answer yet (a slow first start, a long restore of its state) gets 60 s
# before it is restarted; a daemon that is not there is started at once. A
# start issued while a daemon is still shutting down is a no-op for init
# scripts, so while no daemon is there the start is repeated every 5 s.
vs_start_docker() {
  vs_docker_state
  if [ "$DOCKER_STATE" = running ]; then
    return 0
  fi
  if vs_dockerd_alive; then
    if vs_wait_docker 60; then
      return 0
    fi
    echo "the Docker daemon runs but its API has not answered for 60 s ($DOCKER_WHY): restarting it" >&2
    vs_start_docker_once || return 1
  fi
  vs_i=0
  while [ "$vs_i" -lt 60 ]; do
    if [ $((vs_i % 5)) = 0 ] && ! vs_dockerd_alive; then
      vs_start_docker_once || return 1
    fi
    vs_docker_state
    if [ "$DOCKER_STATE" = running ]; then
      return 0
    fi
    sleep 1
    vs_i=$((vs_i + 1))
  done
  echo "Docker did not answer within 60 s of being started: $DOCKER_WHY" >&2
  return 1
}

# vs_volume_device VOLUME_ID: the block device of an attached EBS volume,
# found by the volume's id: the link udev makes from an NVMe disk's serial
# (Nitro instances), the serial in sysfs, else, on an instance without NVMe
# disks (Xen), the attachment's own name.
vs_volume_device() {
  vs_serial=$(printf '%s' "$1" | tr -d -)
  vs_link=/dev/disk/by-id/nvme-Amazon_Elastic_Block_Store_$vs_serial
  if [ -e "$vs_link" ]; then
    readlink -f "$vs_link"
    return 0
  fi
  for vs_s in /sys/block/nvme*/device/serial; do
    [ -r "$vs_s" ] || continue
    if [ "$(tr -d ' ' <"$vs_s")" = "$vs_serial" ]; then
      vs_b=${vs_s#/sys/block/}
      printf '/dev/%s' "${vs_b%%/*}"
      return 0
    fi
  done
  if ! ls /dev/nvme0n1 >/dev/null 2>&1; then
    for vs_d in /dev/xvdf /dev/sdf; do
      if [ -b "$vs_d" ]; then
        printf '%s' "$vs_d"
        return 0
      fi
    done
  fi
  return 1
}

# vs_devnum PATH: major:minor of a block device, in decimal (as findmnt
# prints them).
vs_devnum() {
  vs_mm=$(vs_root stat -L -c '%t %T' "$1") || return 1
  set -- $vs_mm
  printf '%d:%d' "0x$1" "0x$2"
}

# Bytes read from the start of a volume before it may be formatted.
VS_ZERO_BYTES=8388608

# vs_blank DEV FORMAT: true when DEV may be formatted, all of: blkid -p
# found no signature (exit 2) and the device could be read (blockdev
# --getsize64 answers and dd reads its first 8 MiB, or all of a smaller
# device), those bytes are all zero, and FORMAT is may-format (the
# operator says the volume was created blank by this stack and was never
# formatted). Otherwise sets VS_WHY to what was found.
vs_blank() {
  vs_bdev=$1
  vs_allow=$2
  vs_root blkid -p "$vs_bdev" >/dev/null 2>&1
  vs_brc=$?
  if [ "$vs_brc" != 2 ]; then
    VS_WHY="blkid -p exited with $vs_brc (2 is no signature found)"
    return 1
  fi
  if ! vs_size=$(vs_root blockdev --getsize64 "$vs_bdev" 2>/dev/null) || [ -z "$vs_size" ]; then
    VS_WHY="blkid found no signature, but blockdev --getsize64 could not read the device's size"
    return 1
  fi
  vs_want=$VS_ZERO_BYTES
  if [ "$vs_size" -lt "$vs_want" ]; then
    vs_want=$vs_size
  fi
  vs_got=$(vs_root dd if="$vs_bdev" bs=1048576 count=8 iflag=fullblock 2>/dev/null | wc -c | tr -d ' ')
  if [ "$vs_got" != "$vs_want" ]; then
    VS_WHY="blkid found no signature, but only $vs_got of the first $vs_want bytes could be read"
    return 1
  fi
  vs_nonzero=$(vs_root dd if="$vs_bdev" bs=1048576 count=8 iflag=fullblock 2>/dev/null | tr -d '\000' | wc -c | tr -d ' ')
  if [ "$vs_nonzero" != 0 ]; then
    VS_WHY="blkid found no signature, but $vs_nonzero of the first $vs_want bytes are not zero: data blkid does not recognise"
    return 1
  fi
  if [ "$vs_allow" != may-format ]; then
    VS_WHY="the volume reads as blank, but it was not created blank by this stack or was formatted before ($vs_allow)"
    return 1
  fi
  return 0
}

# vs_old_data PGDATA: true when PGDATA holds no postgres data directory
# while the named Docker volume an earlier release kept postgres's data in
# (votingstack-db-data) does; sets VS_WHY. Postgres must then not start on
# PGDATA: it would serve an empty database over the votes.
vs_old_data() {
  if vs_root test -e "$1/PG_VERSION"; then
    return 1
  fi
  vs_old=$(vs_root docker volume inspect -f '{{.Mountpoint}}' votingstack-db-data 2>/dev/null) || return 1
  if [ -n "$vs_old" ] && vs_root test -e "$vs_old/PG_VERSION"; then
    VS_WHY="this host keeps postgres's data in the Docker volume votingstack-db-data ($vs_old, an earlier release's layout) and $1 holds none"
    return 0
  fi
  return 1
}

# vs_move_old_data PGDATA: moves postgres's data from the named Docker
# volume an earlier release kept it in (at $vs_old, found by vs_old_data)
# into the empty PGDATA on the data volume: stops the db container so the
# files hold still, copies them (cp -a, owners and modes kept) into a
# directory beside PGDATA, compares the copy with the original file by file,
# and only then renames it to PGDATA, so a copy cut short never looks like a
# data directory. The named volume is left as it was. On a refusal or a
# failure sets VS_WHY, starts postgres again on the named volume if it was
# running, and returns 1.
vs_move_old_data() {
  vs_to=$1
  vs_tmp="$1.upgrade-copy"
  vs_users=$(vs_root docker ps -a --filter volume=votingstack-db-data --format '{{.Names}}') || {
    VS_WHY="docker ps could not list the containers using votingstack-db-data"
    return 1
  }
  vs_was_running=false
  for vs_user in $vs_users; do
    if [ "$vs_user" != db ]; then
      VS_WHY="container $vs_user uses the Docker volume votingstack-db-data too; only the db container may"
      return 1
    fi
    if [ "$(vs_root docker inspect -f '{{.State.Running}}' db 2>/dev/null)" = true ]; then
      vs_was_running=true
    fi
  done
  if [ -n "$(vs_root ls -A "$vs_to")" ]; then
    VS_WHY="$vs_to is not empty, though it holds no PG_VERSION"
    return 1
  fi
  vs_need=$(vs_root du -sk "$vs_old" | cut -f1)
  vs_free=$(vs_root df -Pk "$vs_to" | tail -n 1 | tr -s ' ' | cut -d' ' -f4)
  case "$vs_need$vs_free" in
    '' | *[!0-9]*)
      VS_WHY="could not measure the data ($vs_need KiB) or the room on the data volume ($vs_free KiB)"
      return 1
      ;;
  esac
  if [ $((vs_need + vs_need / 10 + 65536)) -gt "$vs_free" ]; then
    VS_WHY="the data ($vs_need KiB) does not fit on the data volume ($vs_free KiB free): raise spec.database.volumeSizeGiB"
    return 1
  fi
  if [ "$vs_was_running" = true ]; then
    # postgres shuts down cleanly on docker stop: the files then hold still
    if ! vs_logged vs_root docker stop -t 120 db; then
      VS_WHY="docker stop db failed"
      return 1
    fi
  fi
  vs_root rm -rf "$vs_tmp"
  if ! vs_logged vs_root cp -a "$vs_old" "$vs_tmp"; then
    VS_WHY="copying $vs_old to $vs_tmp failed"
  elif ! vs_logged vs_root diff -r --no-dereference "$vs_old" "$vs_tmp"; then
    VS_WHY="the copy in $vs_tmp differs from $vs_old"
  elif ! vs_root sync || ! vs_root rmdir "$vs_to" || ! vs_root mv "$vs_tmp" "$vs_to"; then
    VS_WHY="could not rename $vs_tmp to $vs_to"
  else
    return 0
  fi
  vs_root rm -rf "$vs_tmp"
  if [ "$vs_was_running" = true ]; then
    vs_logged vs_root docker start db
  fi
  return 1
}

# vs_mount_volume VOLUME_ID DIR SUBDIR FORMAT
vs_mount_volume() {
  vs_vol=$1
  vs_dir=$2
  vs_sub=$3
  vs_format=$4
  vs_dev=
  vs_w=0
  # EC2 reports the attachment before the disk shows on the host.
  while [ "$vs_w" -lt 60 ]; do
    if vs_dev=$(vs_volume_device "$vs_vol"); then
      break
    fi
    vs_dev=
    sleep 1
    vs_w=$((vs_w + 1))
  done
  if [ -z "$vs_dev" ]; then
    echo "data volume $vs_vol is attached in EC2, but no disk with its id appeared on this host within 60 s" \
      "(looked for /dev/disk/by-id/nvme-Amazon_Elastic_Block_Store_$(printf '%s' "$vs_vol" | tr -d -)," \
      "the NVMe serials in /sys/block, and /dev/xvdf on instances without NVMe disks)" >&2
    return 1
  fi
  vs_root mkdir -p "$vs_dir" || return 1
  vs_formatted=false
  if vs_root mountpoint -q "$vs_dir"; then
    vs_have=$(vs_root findmnt -n -o MAJ:MIN --mountpoint "$vs_dir" | tr -d ' ')
    vs_want=$(vs_devnum "$vs_dev") || return 1
    if [ "$vs_have" != "$vs_want" ]; then
      echo "$vs_dir has another filesystem mounted (device $vs_have), not data volume $vs_vol ($vs_dev, $vs_want);" \
        "unmount it so the data volume can be mounted there" >&2
      return 1
    fi
  else
    vs_type=$(vs_root blkid -p -o value -s TYPE "$vs_dev")
    vs_rc=$?
    case "$vs_rc" in
      0)
        if [ -z "$vs_type" ]; then
          echo "data volume unusable: $vs_vol ($vs_dev) carries a partition table or an unknown signature, not a filesystem:" \
            "it is never formatted; wipe it or attach the right volume" >&2
          return 3
        fi
        ;;
      2)
        # blkid found no signature: formatted only when it is blank for sure
        if ! vs_blank "$vs_dev" "$vs_format"; then
          echo "data volume unusable: $vs_vol ($vs_dev) is not formatted: $VS_WHY" >&2
          return 3
        fi
        if ! vs_logged vs_root mkfs.ext4 -q -L vs-data "$vs_dev"; then
          echo "formatting data volume $vs_vol ($vs_dev) failed" >&2
          return 1
        fi
        vs_type=ext4
        vs_formatted=true
        ;;
      *)
        echo "data volume unusable: blkid could not read $vs_vol ($vs_dev): exit $vs_rc" >&2
        return 3
        ;;
    esac
    vs_uuid=$(vs_root blkid -p -o value -s UUID "$vs_dev")
    if [ -z "$vs_uuid" ]; then
      echo "data volume $vs_vol ($vs_dev) has a $vs_type filesystem without a UUID" >&2
      return 1
    fi
    # In /etc/fstab by UUID (nofail: the host boots without it), so a
    # reboot mounts it again before Docker restarts postgres.
    if [ -f /etc/fstab ]; then
      vs_root sed -i "\\| $vs_dir |d" /etc/fstab || return 1
    fi
    printf 'UUID=%s %s %s defaults,nofail 0 2\n' "$vs_uuid" "$vs_dir" "$vs_type" | vs_root tee -a /etc/fstab >/dev/null \
      || return 1
    if ! vs_root mount UUID="$vs_uuid" "$vs_dir"; then
      echo "mounting data volume $vs_vol (UUID=$vs_uuid, $vs_dev) at $vs_dir failed" >&2
      return 1
    fi
  fi
  vs_uuid=$(vs_root blkid -p -o value -s UUID "$vs_dev")
  vs_root mkdir -p "$vs_dir/$vs_sub" || return 1
  vs_moved=false
  if vs_old_data "$vs_dir/$vs_sub"; then
    vs_found=$VS_WHY
    if ! vs_move_old_data "$vs_dir/$vs_sub"; then
      echo "data volume unusable: postgres is not started on data volume $vs_vol: $vs_found;" \
        "moving that data onto the volume was not done: $VS_WHY" \
        "(postgres goes on serving from the Docker volume; see docs/operations.md, upgrading from the named volume)" >&2
      return 3
    fi
    vs_moved=true
  fi
  printf '{"device":"%s","uuid":"%s","formatted":%s,"moved":%s}\n' "$vs_dev" "$vs_uuid" "$vs_formatted" "$vs_moved"
}

case "$1" in
  facts)
    vs_docker_state
    printf '{"instance":"%s","docker":"%s","why":"%s"}\n' "$(vs_instance)" "$DOCKER_STATE" "$DOCKER_WHY"
    ;;
  install)
    vs_install_docker
    vs_rc=$?
    [ "$vs_rc" = 0 ] || exit "$([ "$vs_rc" = 4 ] && echo 4 || echo 1)"
    vs_start_docker || exit 1
    ;;
  start)
    vs_start_docker || exit 1
    ;;
  mount-volume)
    vs_mount_volume "$2" "$3" "$4" "$5"
    vs_rc=$?
    [ "$vs_rc" = 0 ] || exit "$vs_rc"
    ;;
  *)
    echo "unknown step $1" >&2
    exit 2
    ;;
esac
