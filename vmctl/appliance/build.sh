#!/bin/sh
# Builds the tiny demo appliance from Debian packages, and imports it into
# /gvs/catalog when asked:
#
#   vmctl/appliance/build.sh                 # build (cached), print the cache dir
#   vmctl/appliance/build.sh import DIR      # build, then copy into DIR (e.g. /gvs/catalog/tiny)
#
# The appliance: a Debian kernel (linux-image-6.1.*-amd64, the one
# linux-image-amd64 depends on), a busybox initramfs that loads the virtio
# and ext4 modules, mounts the root volume (/dev/vda, ext4) and switches to
# it, and a root file system (busybox-static) whose /sbin/init prints
# "VMCTL-BOOT <name>" on the serial console, appends "<name>@<node>" to
# /var/boots on the volume (so a later boot, elsewhere, shows the earlier
# ones), prints "VMCTL-READY", then prints "tick N" every second.
#
# With a NIC (vmctl gives one to the components of an application that
# declares connections; lcmd serves it), the kernel command line carries
# vmctl.ip=ADDR/PREFIX vmctl.gw=GW vmctl.dns=DNS: init configures eth0
# with them, points /etc/resolv.conf at lcmd's DNS responder (terminal
# names resolve to the peer of that connection), serves a page with the
# VM's name with httpd on port 80 and on every port of the property
# vmctl.listen=P1,P2, and prints "VMCTL-NET <name> <addr>". The property
# vmctl.probe=HOST:PORT,... makes it try each target every second (a DNS
# lookup at lcmd, then an HTTP GET given 3 s) and print
# "VMCTL-REACH HOST:PORT ok" or "VMCTL-REACH HOST:PORT blocked".
#
# Needs: busybox-static, e2fsprogs, cpio, gzip, dpkg, apt (for the kernel).
# Artifacts are cached under $GRID_CACHE (default /var/cache/grid), so a
# second run does nothing. The image directory holds root.vol (the template
# volume), vmlinuz, initrd.img and image.toml (how to boot it).
set -eu

CACHE=${GRID_CACHE:-/var/cache/grid}
VERSION=6   # bump when the appliance's contents change
OUT=$CACHE/appliance/tiny-v$VERSION
ROOT_MB=${ROOT_MB:-24}

log() { echo "build.sh: $*" >&2; }

kernel_pkg() {
    apt-cache depends linux-image-amd64 2>/dev/null |
        sed -n 's/^ *Depends: \(linux-image-6\.1[^ ]*-amd64\)$/\1/p' | head -n1
}

build() {
    [ -f "$OUT/image.toml" ] && return 0
    command -v mkfs.ext4 >/dev/null || { log "mkfs.ext4 missing: apt-get install e2fsprogs"; exit 1; }
    command -v cpio >/dev/null || { log "cpio missing: apt-get install cpio"; exit 1; }
    BB=/bin/busybox
    [ -x "$BB" ] || { log "$BB missing: apt-get install busybox-static"; exit 1; }
    dpkg-query -W -f='${Status}' busybox-static 2>/dev/null | grep -q "ok installed" ||
        { log "busybox-static is not installed (the guest needs a static busybox)"; exit 1; }

    PKG=$(kernel_pkg)
    [ -n "$PKG" ] || { log "cannot find the kernel package linux-image-amd64 depends on (apt-get update?)"; exit 1; }
    KDIR=$CACHE/kernel
    mkdir -p "$KDIR"
    if ! ls "$KDIR"/"$PKG"_*.deb >/dev/null 2>&1; then
        log "downloading $PKG"
        (cd "$KDIR" && apt-get download "$PKG")
    fi
    DEB=$(ls "$KDIR"/"$PKG"_*.deb | head -n1)
    TMP=$(mktemp -d "$CACHE/appliance/.build.XXXXXX")
    trap 'rm -rf "$TMP"' EXIT
    dpkg -x "$DEB" "$TMP/k"
    KVER=$(ls "$TMP/k/lib/modules" | head -n1)
    MODS=$TMP/k/lib/modules/$KVER/kernel

    # The initramfs: busybox, the modules, an init that mounts the volume.
    I=$TMP/initrd
    mkdir -p "$I/bin" "$I/dev" "$I/proc" "$I/sys" "$I/newroot" "$I/lib/modules"
    cp "$BB" "$I/bin/busybox"
    for m in lib/crc16 crypto/crc32c_generic lib/libcrc32c fs/mbcache fs/jbd2/jbd2 fs/ext4/ext4 \
             drivers/virtio/virtio_ring drivers/virtio/virtio \
             drivers/virtio/virtio_pci_modern_dev drivers/virtio/virtio_pci_legacy_dev \
             drivers/virtio/virtio_pci drivers/block/virtio_blk \
             net/core/failover drivers/net/net_failover drivers/net/virtio_net; do
        cp "$MODS/$m.ko" "$I/lib/modules/"
        echo "$(basename "$m").ko" >> "$I/lib/modules/order"
    done
    cat > "$I/init" <<'INIT'
#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t devtmpfs dev /dev
mount -t proc proc /proc
mount -t sysfs sys /sys
for m in $(cat /lib/modules/order); do insmod /lib/modules/$m || echo "VMCTL-ERROR insmod $m failed"; done
i=0
while [ ! -b /dev/vda ] && [ $i -lt 50 ]; do sleep 0.1; i=$((i+1)); done
if ! mount -t ext4 /dev/vda /newroot; then
    echo "VMCTL-ERROR cannot mount the root volume /dev/vda"
    exec sh
fi
umount /proc /sys
mount --move /dev /newroot/dev
exec switch_root /newroot /sbin/init
INIT
    chmod 755 "$I/init"
    (cd "$I" && find . | cpio -o -H newc --quiet | gzip -9) > "$TMP/initrd.img"

    # The root file system on the volume.
    R=$TMP/root
    mkdir -p "$R/bin" "$R/sbin" "$R/dev" "$R/proc" "$R/sys" "$R/tmp" "$R/var" "$R/etc"
    cp "$BB" "$R/bin/busybox"
    echo tiny > "$R/etc/hostname"
    cat > "$R/sbin/init" <<'INIT'
#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
arg() { sed -n "s/.*vmctl\.$1=\([^ ]*\).*/\1/p" /proc/cmdline; }
NAME=$(arg name); NODE=$(arg node)
hostname "${NAME:-tiny}"
echo "VMCTL-BOOT ${NAME:-tiny} on ${NODE:-?}"
echo "earlier boots:"; cat /var/boots 2>/dev/null
echo "${NAME:-tiny}@${NODE:-?}" >> /var/boots
sync
echo "VMCTL-READY ${NAME:-tiny} boots=$(wc -l < /var/boots)"
IP=$(arg ip); GW=$(arg gw); DNS=$(arg dns)
if [ -n "$IP" ]; then
    ip link set lo up
    if ip link set eth0 up && ip addr add "$IP" dev eth0 && ip route add default via "$GW"; then
        echo "nameserver ${DNS:-$GW}" > /etc/resolv.conf
        mkdir -p /tmp/www
        echo "${NAME:-tiny}" > /tmp/www/index.html
        for p in 80 $(arg listen | tr , ' '); do httpd -p "$p" -h /tmp/www; done
        echo "VMCTL-NET ${NAME:-tiny} $IP"
    else
        echo "VMCTL-ERROR cannot configure eth0 with $IP"
    fi
fi
# One HOST:PORT: the address lcmd's DNS gives HOST, then an HTTP GET.
reach() {
    host=${1%:*}; port=${1##*:}
    addr=$(nslookup -type=a "$host" "${DNS:-$GW}" 2>/dev/null |
        awk '/^Name:/ { n = 1 } n && /^Address/ { print $NF; exit }')
    if [ -z "$addr" ]; then
        echo "VMCTL-REACH $1 blocked (no address for $host)"
    # (busybox 1.35's wget -T crashes: the timeout is timeout's.)
    elif timeout 3 wget -q -O /dev/null "http://$addr:$port/" 2>/dev/null; then
        echo "VMCTL-REACH $1 ok"
    else
        echo "VMCTL-REACH $1 blocked"
    fi
}
PROBE=$(arg probe)
if [ -n "$PROBE" ]; then
    while true; do
        for t in $(echo "$PROBE" | tr , ' '); do reach "$t"; done
        sleep 1
    done &
fi
n=0
while true; do n=$((n+1)); echo "tick $n"; sleep 1; done
INIT
    chmod 755 "$R/sbin/init"
    rm -f "$TMP/root.vol"
    mkfs.ext4 -q -F -L root -d "$R" "$TMP/root.vol" "${ROOT_MB}M"

    cp "$TMP/k/boot/vmlinuz-$KVER" "$TMP/vmlinuz"
    cat > "$TMP/image.toml" <<TOML
# The tiny demo appliance (vmctl/appliance/build.sh), kernel $KVER.
kernel = "vmlinuz"
initrd = "initrd.img"
cmdline = "console=ttyS0 quiet panic=-1"
volumes = ["root.vol"]
TOML
    mkdir -p "$OUT"
    for f in vmlinuz initrd.img root.vol image.toml; do cp --sparse=always "$TMP/$f" "$OUT/$f.tmp"; done
    for f in vmlinuz initrd.img root.vol image.toml; do mv "$OUT/$f.tmp" "$OUT/$f"; done
    log "built $OUT"
}

mkdir -p "$CACHE/appliance"
build
case "${1:-}" in
    "") echo "$OUT" ;;
    import)
        DEST=${2:?usage: build.sh import DIR}
        mkdir -p "$DEST"
        for f in vmlinuz initrd.img image.toml root.vol; do
            [ -f "$DEST/$f" ] && cmp -s "$OUT/$f" "$DEST/$f" && continue
            cp "$OUT/$f" "$DEST/$f.tmp" && mv "$DEST/$f.tmp" "$DEST/$f"
        done
        echo "$DEST"
        ;;
    *) echo "usage: build.sh [import DIR]" >&2; exit 2 ;;
esac
