#!/bin/sh
# Finish the host root filesystem ($1).
set -eu
r="$1"
# the login user of the stack, as on Debian cloud images
chroot "$r" useradd --create-home --shell /bin/bash --groups sudo,docker admin
chroot "$r" usermod -p '*' admin
printf 'admin ALL=(ALL) NOPASSWD:ALL\n' > "$r/etc/sudoers.d/90-admin"
chmod 0440 "$r/etc/sudoers.d/90-admin"
# no host keys in the image: each host makes its own on first boot
rm -f "$r"/etc/ssh/ssh_host_*
# no audit login uid inside a container
sed -i 's/^session\s\+required\s\+pam_loginuid.so/session optional pam_loginuid.so/' "$r/etc/pam.d/sshd"
printf 'vsw-host\n' > "$r/etc/hostname"
# the engine's init script raises limits that a container may not raise;
# keep going at the limits the container has
sed -i -e 's/^\(\s*ulimit -[a-z] [0-9a-z]*\)\s*$/\1 2>\/dev\/null || true/' "$r/etc/init.d/docker"
