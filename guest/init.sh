#!/bin/sh
# /init of the vhost-user-ts test guest (busybox initramfs, built by build-initramfs.sh).
#
# The job comes from the kernel command line (all optional except vut.test):
#   vut.test=blk|net|netserve|netmigrate|netmigratepeer|boot|restart|migrate
#                           what to do (boot = load modules, report, power off)
#   vut.dev=vda            block device under test
#   vut.bytes=4194304      bytes of pattern written + verified (multiple of 4096)
#   vut.offset=0           byte offset of the pattern region (multiple of 4096)
#   vut.seed=1             pattern seed (1 .. 2147483646)
#   vut.tail=1             also write + verify the last 4 KiB of the disk (0 = skip)
#   vut.discard=1048576    bytes discarded right after the pattern region (0 = skip)
#   vut.bs=65536           dd block size for the pattern write/read
#   vut.flush=1            force "write back" caching if the device has VIRTIO_BLK_F_FLUSH, so that
#                          fsync sends a real FLUSH (0 = leave the device's cache mode alone)
# restart job (the host kills and restarts the back-end meanwhile):
#   vut.writers=4          concurrent writers; writer w owns vut.bytes at vut.offset + w * vut.bytes
#   vut.rounds=5           rounds; in round r writer w writes the pattern of seed
#                          vut.seed + r * vut.writers + w (O_DIRECT, fsync), reads it back
#                          (O_DIRECT) and compares. `VUT-STEP round-R-io` marks the start of a
#                          round's I/O (all patterns generated), so the host can kill mid-I/O.
# migrate job (blk under live migration; the host migrates the VM while this runs):
#   vut.bytes=1048576      region at offset 0 (multiple of 131072)
#   vut.seconds=20         how long (guest uptime) to keep going
#   vut.hold=3             seconds the second half of a read waits unread in dd's buffer
#   Prints "VUT-STEP migrate-loop" (the host may now migrate), then rounds of: new random
#   contents written with O_DIRECT (reference copy in /tmp, i.e. guest RAM); one O_DIRECT read
#   of the region in two halves into one dd buffer, through a fifo whose reader takes the second
#   half only vut.hold seconds after it was DMA'd ("VUT-STEP migrate-filled" then: the host lets
#   the VM switch over during the hold); meanwhile O_DIRECT re-reads of chunks into fresh files,
#   each compared with the reference; then the held half is compared. That is the sharp check:
#   the guest CPU reads the DMA'd pages only seconds later, on the destination, so a page the
#   back-end wrote without marking it in the dirty log arrives with stale bytes.
#   A "migrate-tick" step every 2 s; at the end the whole region is read back with O_DIRECT and
#   compared; the result carries the counts and the region's sha256 (the host checks the image).
# net job (the guest's one virtio-net interface; the peer is the host end, e.g. a tap):
#   vut.ip=10.78.0.2/24    our address        vut.peer=10.78.0.1   the peer's address
#   vut.bytes=1048576      bytes sent to and received from the peer over TCP (busybox nc)
#   vut.echos=3            echo requests from the peer to wait for before finishing
#   Steps: address + up, `ping -c 3` the peer, print "VUT-STEP net-up" (the host may now ping
#   us), send vut.bytes of /dev/urandom to PEER:5001, receive from PEER:5002 until the peer
#   closes, wait for vut.echos echo requests (/proc/net/snmp InEchos), report sha256 of both.
#   The first ping is retried for up to 60 s (the peer may be a guest still booting).
# netserve job (the other side of `net`, for two guests on one switch): the same arguments;
#   listen on 5001 (receive until the peer closes) and 5002 (send vut.bytes of /dev/urandom),
#   address + up, ping the peer (retried, then `ping -c 3`), wait for both transfers and for
#   vut.echos echo requests; the same VUT-RESULT fields as `net` (tx = served, rx = received).
# netmigrate job (the guest that is live-migrated, for two guests on one switch; the receiving
#   side of netmigratepeer): vut.ip, vut.bytes (expected), vut.echos; listen on 5001 (in guest RAM:
#   the receiver migrates with the guest), address + up, "VUT-STEP netmigrate-listening"; receive
#   until the peer closes (300 s at most), "VUT-STEP netmigrate-received"; then wait for vut.echos
#   more echo requests (the peer keeps pinging). Result: if, mac, features, rx, in_echos.
# netmigratepeer job (the other guest): vut.ip, vut.peer, vut.bytes, vut.chunk=32768,
#   vut.pause_ms=100, vut.linger=4. Address + up, first contact (retried 60 s), then
#   `ping -i 0.2 PEER` in the background with its reply lines straight on the console
#   ("64 bytes from PEER: seq=N ttl=T time=MS ms"), "VUT-STEP netmigratepeer-sending"; sends
#   vut.bytes of /dev/urandom to PEER:5001 in writes of vut.chunk with a pause of vut.pause_ms
#   after each (so the transfer spans the migration; "VUT-STEP netmigratepeer-sent N" every 16
#   chunks), "VUT-STEP netmigratepeer-sent-all", keeps pinging vut.linger seconds, stops the
#   ping (its summary goes to the console). Result: if, mac, features, tx.
#
# Output protocol (serial console):
#   VUT-STEP <step> <detail>          one line per step, so a failing run is diagnosable
#   VUT-RESULT {"job":...,"ok":true|false,...}   exactly one line, then `poweroff -f`
#
# The pattern (see gen_pattern; src/guest/qemu.ts makePattern() reproduces it on the host):
#   disk 4 KiB block n (absolute index): bytes 0..3 = n (u32 BE), 4..7 = x0 (u32 BE),
#   bytes 8..4095 = base[(k + n*509 % 4096) % 4096]; base[i] = x_{i+1} % 256,
#   x_{j+1} = x_j * 48271 % 2147483647, x0 = seed % 2147483646 + 1.

export PATH=/bin:/sbin:/usr/bin:/usr/sbin

/bin/busybox mkdir -p /proc /sys /dev /tmp /sbin /usr/bin /usr/sbin
/bin/busybox --install -s
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null || mount -t tmpfs tmpfs /dev
mount -t tmpfs tmpfs /tmp

JOB=unknown
CUR_STEP=init

json_escape() {
  # stdin -> JSON string body (no quotes): escape \ and ", turn newlines/tabs into spaces
  tr '\n\t\r' '   ' | sed -e 's/\\/\\\\/g' -e 's/"/\\"/g'
}

step() {
  CUR_STEP=$1
  shift
  echo "VUT-STEP $CUR_STEP $*"
}

drain_console() {
  # `poweroff -f` right after an echo can cut the line off: the UART is still sending it. stty
  # applies its setting with tcsetattr(TCSADRAIN), which waits until the console output has
  # left the UART; the short sleep covers the last FIFO bytes.
  stty -F /dev/console -echo 2>/dev/null
  usleep 200000
}

finish() {
  # $1 = JSON members (without braces) to append after job/ok
  sync 2>/dev/null
  echo "VUT-RESULT {\"job\":\"$JOB\",\"ok\":true,\"uptime_s\":$(cut -d' ' -f1 /proc/uptime)${1:+,$1}}"
  drain_console
  poweroff -f
  sleep 5
  exit 0
}

fail() {
  # $* = error text; the step is the current one
  msg=$(printf '%s' "$*" | json_escape)
  echo "VUT-STEP $CUR_STEP FAILED: $*"
  echo "VUT-RESULT {\"job\":\"$JOB\",\"ok\":false,\"step\":\"$CUR_STEP\",\"error\":\"$msg\",\"uptime_s\":$(cut -d' ' -f1 /proc/uptime)}"
  drain_console
  poweroff -f
  sleep 5
  exit 1
}

# ---- kernel command line -------------------------------------------------------------------
step cmdline "$(cat /proc/cmdline)"
VUT_TEST=
VUT_DEV=vda
VUT_BYTES=4194304
VUT_OFFSET=0
VUT_SEED=1
VUT_TAIL=1
VUT_DISCARD=1048576
VUT_BS=65536
VUT_FLUSH=1
VUT_IP=10.78.0.2/24
VUT_PEER=10.78.0.1
VUT_ECHOS=3
VUT_WRITERS=4
VUT_ROUNDS=5
VUT_SECONDS=20
VUT_HOLD=3
VUT_CHUNK=32768
VUT_PAUSE_MS=100
VUT_LINGER=4
for arg in $(cat /proc/cmdline); do
  case "$arg" in
    vut.*=*)
      k=${arg%%=*}; k=${k#vut.}; v=${arg#*=}
      case "$k" in
        *[!a-z0-9_]*|'') fail "bad kernel argument $arg" ;;
      esac
      case "$v" in
        *[!A-Za-z0-9_.,:/-]*) fail "bad value in kernel argument $arg" ;;
      esac
      k=$(echo "$k" | tr a-z A-Z)
      eval "VUT_$k=\$v"
      ;;
  esac
done
JOB=${VUT_TEST:-unknown}
[ -n "$VUT_TEST" ] || fail "no vut.test=JOB on the kernel command line"

# ---- modules -------------------------------------------------------------------------------
step modules "$(cat /modules/order | tr '\n' ' ')"
for m in $(cat /modules/order); do
  insmod "/modules/$m.ko" 2>/tmp/insmod.err || {
    # already loaded (or built in) is fine
    grep -q "^$m " /proc/modules || [ -d "/sys/module/$m" ] || fail "insmod $m: $(cat /tmp/insmod.err)"
  }
done

is_uint() {
  case "$1" in ''|*[!0-9]*) return 1 ;; esac
  return 0
}

rdn() {
  # numeric sysfs attribute -> number, or null when absent/unreadable/non-numeric
  v=$(cat "$1" 2>/dev/null) && is_uint "$v" && { echo "$v"; return; }
  echo null
}

rds() {
  # sysfs attribute -> JSON string, or null when absent/unreadable (e.g. serial without GET_ID)
  v=$(cat "$1" 2>/dev/null) && { echo "\"$(printf '%s' "$v" | json_escape)\""; return; }
  echo null
}

stat_json() {
  # /sys/block/DEV/stat deltas: $1 = before, $2 = after (17 fields, see Documentation/block/stat.rst)
  echo "$1 $2" | awk '{
    n = NF / 2
    for (i = 1; i <= n; i++) d[i] = $(i + n) - $i
    printf "{\"reads\":%d,\"read_sectors\":%d,\"writes\":%d,\"write_sectors\":%d", d[1], d[3], d[5], d[7]
    printf ",\"discards\":%d,\"discard_sectors\":%d,\"flushes\":%d}", d[12], d[14], d[16]
  }'
}

gen_pattern() {
  # $1 = seed, $2 = first 4 KiB block, $3 = block count  -> binary pattern on stdout
  awk -v seed="$1" -v first="$2" -v count="$3" '
    BEGIN {
      x = seed % 2147483646 + 1; x0 = x
      h = ""
      for (i = 0; i < 4096; i++) { x = (x * 48271) % 2147483647; h = h sprintf("%02x", x % 256) }
      hh = h h
      for (n = first; n < first + count; n++) {
        r = (n * 509) % 4096
        printf "%08x%08x%s\n", n, x0, substr(hh, 2 * (8 + r) + 1, 2 * 4088)
      }
    }' | xxd -r -p
}

first_diff() {
  # $1 $2 = files -> "byte N" of the first difference (1-based as cmp prints it)
  cmp "$1" "$2" 2>&1 | head -n 1
}

# write_verify NAME OFFSET BYTES BS: pattern region -> device (O_DIRECT, fsync), read back
# (O_DIRECT), compare sha256. Sets WV_SHA. Fails the run on any mismatch.
write_verify() {
  name=$1; off=$2; len=$3; bs=$4
  step "$name-gen" "offset=$off bytes=$len seed=$VUT_SEED"
  gen_pattern "$VUT_SEED" $((off / 4096)) $((len / 4096)) > /tmp/pattern || fail "pattern generation failed"
  got=$(stat -c %s /tmp/pattern)
  [ "$got" = "$len" ] || fail "pattern is $got bytes, expected $len"
  WV_SHA=$(sha256sum < /tmp/pattern | cut -d' ' -f1)
  step "$name-write" "dd oflag=direct conv=fsync bs=$bs offset=$off bytes=$len sha256=$WV_SHA"
  dd if=/tmp/pattern of="$DEV" bs="$bs" seek="$off" oflag=direct,seek_bytes conv=notrunc,fsync \
    2>/tmp/dd.err || fail "write failed: $(cat /tmp/dd.err)"
  step "$name-read" "dd iflag=direct bs=$bs offset=$off bytes=$len"
  dd if="$DEV" of=/tmp/readback bs="$bs" skip="$off" count="$len" \
    iflag=direct,skip_bytes,count_bytes 2>/tmp/dd.err || fail "read failed: $(cat /tmp/dd.err)"
  rsha=$(sha256sum < /tmp/readback | cut -d' ' -f1)
  if [ "$rsha" != "$WV_SHA" ]; then
    fail "data mismatch: wrote sha256 $WV_SHA, read $rsha ($(stat -c %s /tmp/readback) bytes; first difference: $(first_diff /tmp/pattern /tmp/readback))"
  fi
  step "$name-verify" "ok sha256=$rsha"
  rm -f /tmp/pattern /tmp/readback
}

job_boot() {
  step boot "modules loaded"
  finish "\"modules\":\"$(lsmod | awk 'NR>1 {print $1}' | tr '\n' ' ' | json_escape)\""
}

in_echos() {
  awk '$1 == "Icmp:" { if (!n) { for (i = 2; i <= NF; i++) if ($i == "InEchos") c = i; n = 1 } else print $c }' /proc/net/snmp
}

# Pings the peer once a second until it answers (60 tries): it may still be booting.
first_contact() {
  tries=0
  until ping -c 1 -W 1 "$VUT_PEER" > /dev/null 2>&1; do
    tries=$((tries + 1))
    [ $tries -lt 60 ] || break
    sleep 1
  done
}

# Whether process $1 still runs (a finished background job stays a zombie until waited for).
alive() {
  state=$(cut -d' ' -f3 "/proc/$1/stat" 2>/dev/null)
  [ -n "$state" ] && [ "$state" != Z ]
}

# net jobs: the first interface that is not lo, and what the driver negotiated on it
# (sets IF, features, mtu, mac).
net_find() {
  step net-find "interfaces: $(ls /sys/class/net | tr '\n' ' ')"
  IF=
  for n in $(ls /sys/class/net); do [ "$n" != lo ] && IF=$n && break; done
  [ -n "$IF" ] || fail "no network interface (virtio_net not bound?)"
  features=$(cat "/sys/class/net/$IF/device/features" 2>/dev/null)
  mtu=$(cat "/sys/class/net/$IF/mtu")
  mac=$(cat "/sys/class/net/$IF/address")
}

# Waits for the peer, then `ping -c 3`: at least one reply or the job fails (sets received).
net_ping_peer() {
  first_contact
  ping -c 3 -W 5 "$VUT_PEER" > /tmp/ping.out 2>&1
  received=$(awk '/packets received/ { print $4 }' /tmp/ping.out)
  is_uint "$received" || received=0
  [ "$received" -gt 0 ] || fail "no echo reply from $VUT_PEER: $(cat /tmp/ping.out)"
  step net-up "$IF $VUT_IP answered $received of 3 pings"
}

# /tmp/tx.bin: $VUT_BYTES random bytes to send (sets tx_sha).
net_make_tx_file() {
  count=$((VUT_BYTES / 65536)); rest=$((VUT_BYTES % 65536))
  { dd if=/dev/urandom bs=65536 count=$count 2>/dev/null; dd if=/dev/urandom bs=$rest count=1 2>/dev/null; } > /tmp/tx.bin
  tx_sha=$(sha256sum < /tmp/tx.bin | cut -d' ' -f1)
}

# Size and checksum of what arrived in /tmp/rx.bin (sets rx_bytes, rx_sha).
net_rx_file_sums() {
  rx_bytes=$(stat -c %s /tmp/rx.bin)
  rx_sha=$(sha256sum < /tmp/rx.bin | cut -d' ' -f1)
}

# Waits up to 60 s for $VUT_ECHOS echo requests from the peer (sets echos).
net_wait_echos() {
  step net-echos "waiting for $VUT_ECHOS echo requests from the peer"
  waited=0
  while [ "$(in_echos)" -lt "$VUT_ECHOS" ] && [ $waited -lt 600 ]; do usleep 100000; waited=$((waited + 1)); done
  echos=$(in_echos)
  [ "$echos" -ge "$VUT_ECHOS" ] || fail "only $echos echo requests from the peer in 60 s"
}

# The server side of `net` (two guests on one switch): see the header.
job_netserve() {
  is_uint "$VUT_BYTES" || fail "vut.bytes=$VUT_BYTES is not a number"
  is_uint "$VUT_ECHOS" || fail "vut.echos=$VUT_ECHOS is not a number"
  net_find
  net_make_tx_file
  # Listen before the link is up, so the peer finds us once we answer pings. busybox nc -l
  # stops reading the socket once its stdin is at EOF: the receiver's stdin is a held fifo.
  ip link set lo up
  mkfifo /tmp/hold
  sleep 600 > /tmp/hold &
  hold=$!
  nc -l -p 5001 < /tmp/hold > /tmp/rx.bin 2>/tmp/nc-rx.err &
  receiver=$!
  nc -l -p 5002 < /tmp/tx.bin > /dev/null 2>/tmp/nc-tx.err &
  sender=$!
  ip addr add "$VUT_IP" dev "$IF" || fail "ip addr add $VUT_IP dev $IF"
  ip link set "$IF" up || fail "ip link set $IF up"
  step net-ping "$IF $mac mtu $mtu: ping $VUT_PEER; serving $(stat -c %s /tmp/tx.bin) bytes sha256=$tx_sha on 5002"
  net_ping_peer

  step net-transfers "waiting for the peer to send to 5001 and fetch from 5002"
  waited=0
  while { alive $receiver || alive $sender; } && [ $waited -lt 1200 ]; do usleep 100000; waited=$((waited + 1)); done
  alive $receiver && fail "the peer did not finish sending to 5001 in 120 s: $(stat -c %s /tmp/rx.bin) bytes so far"
  alive $sender && fail "the peer did not fetch from 5002 in 120 s: $(cat /tmp/nc-tx.err)"
  kill $hold 2>/dev/null
  net_rx_file_sums
  step net-received "$rx_bytes bytes sha256=$rx_sha"

  net_wait_echos
  finish "\"if\":\"$IF\",\"mac\":\"$mac\",\"mtu\":$mtu,\"features\":\"$features\",\"ping_received\":$received,\"tx\":{\"bytes\":$(stat -c %s /tmp/tx.bin),\"sha256\":\"$tx_sha\"},\"rx\":{\"bytes\":$rx_bytes,\"sha256\":\"$rx_sha\"},\"in_echos\":$echos"
}

job_net() {
  is_uint "$VUT_BYTES" || fail "vut.bytes=$VUT_BYTES is not a number"
  is_uint "$VUT_ECHOS" || fail "vut.echos=$VUT_ECHOS is not a number"
  net_find
  ip link set lo up
  ip addr add "$VUT_IP" dev "$IF" || fail "ip addr add $VUT_IP dev $IF"
  ip link set "$IF" up || fail "ip link set $IF up"
  step net-ping "$IF $mac mtu $mtu: ping $VUT_PEER"
  net_ping_peer

  net_make_tx_file
  step net-send "$(stat -c %s /tmp/tx.bin) bytes sha256=$tx_sha to $VUT_PEER:5001"
  timeout 120 nc "$VUT_PEER" 5001 < /tmp/tx.bin > /dev/null 2>/tmp/nc.err || fail "nc to $VUT_PEER:5001: $(cat /tmp/nc.err)"

  # busybox nc stops reading the socket once its stdin is at EOF: hold stdin open with a fifo.
  step net-receive "from $VUT_PEER:5002"
  mkfifo /tmp/hold
  sleep 600 > /tmp/hold &
  hold=$!
  timeout 120 nc "$VUT_PEER" 5002 < /tmp/hold > /tmp/rx.bin 2>/tmp/nc.err
  rc=$?
  kill $hold 2>/dev/null
  [ $rc = 0 ] || fail "nc from $VUT_PEER:5002 (exit $rc): $(cat /tmp/nc.err)"
  net_rx_file_sums
  step net-received "$rx_bytes bytes sha256=$rx_sha"

  net_wait_echos
  finish "\"if\":\"$IF\",\"mac\":\"$mac\",\"mtu\":$mtu,\"features\":\"$features\",\"ping_received\":$received,\"tx\":{\"bytes\":$(stat -c %s /tmp/tx.bin),\"sha256\":\"$tx_sha\"},\"rx\":{\"bytes\":$rx_bytes,\"sha256\":\"$rx_sha\"},\"in_echos\":$echos"
}

# The live-migrated side of netmigratepeer: see the header.
job_netmigrate() {
  is_uint "$VUT_BYTES" || fail "vut.bytes=$VUT_BYTES is not a number"
  is_uint "$VUT_ECHOS" || fail "vut.echos=$VUT_ECHOS is not a number"
  net_find
  ip link set lo up
  # busybox nc -l stops reading the socket once its stdin is at EOF: hold it open with a fifo.
  mkfifo /tmp/hold
  sleep 900 > /tmp/hold &
  hold=$!
  nc -l -p 5001 < /tmp/hold > /tmp/rx.bin 2>/tmp/nc-rx.err &
  receiver=$!
  ip addr add "$VUT_IP" dev "$IF" || fail "ip addr add $VUT_IP dev $IF"
  ip link set "$IF" up || fail "ip link set $IF up"
  step netmigrate-listening "$IF $mac mtu $mtu features $features: receiving on 5001"
  waited=0
  while alive $receiver && [ $waited -lt 3000 ]; do usleep 100000; waited=$((waited + 1)); done
  alive $receiver && fail "the peer did not finish sending to 5001 in 300 s: $(stat -c %s /tmp/rx.bin) bytes so far"
  kill $hold 2>/dev/null
  net_rx_file_sums
  step netmigrate-received "$rx_bytes bytes sha256=$rx_sha"
  [ "$rx_bytes" = "$VUT_BYTES" ] || fail "received $rx_bytes bytes, expected $VUT_BYTES: $(cat /tmp/nc-rx.err)"
  want=$(($(in_echos) + VUT_ECHOS))
  waited=0
  while [ "$(in_echos)" -lt $want ] && [ $waited -lt 600 ]; do usleep 100000; waited=$((waited + 1)); done
  echos=$(in_echos)
  [ "$echos" -ge $want ] || fail "only $echos echo requests from the peer, expected $want, in 60 s"
  finish "\"if\":\"$IF\",\"mac\":\"$mac\",\"mtu\":$mtu,\"features\":\"$features\",\"rx\":{\"bytes\":$rx_bytes,\"sha256\":\"$rx_sha\"},\"in_echos\":$echos"
}

# The pinging, sending side of netmigrate: see the header.
job_netmigratepeer() {
  for v in "$VUT_BYTES" "$VUT_CHUNK" "$VUT_PAUSE_MS" "$VUT_LINGER"; do
    is_uint "$v" || fail "vut.bytes/chunk/pause_ms/linger: $v is not a number"
  done
  [ "$VUT_CHUNK" -gt 0 ] && [ $((VUT_BYTES % VUT_CHUNK)) = 0 ] || fail "vut.bytes=$VUT_BYTES is not a multiple of vut.chunk=$VUT_CHUNK"
  net_find
  chunks=$((VUT_BYTES / VUT_CHUNK))
  dd if=/dev/urandom of=/tmp/tx.bin bs=$VUT_CHUNK count=$chunks 2>/dev/null || fail "dd /dev/urandom"
  tx_sha=$(sha256sum < /tmp/tx.bin | cut -d' ' -f1)
  ip link set lo up
  ip addr add "$VUT_IP" dev "$IF" || fail "ip addr add $VUT_IP dev $IF"
  ip link set "$IF" up || fail "ip link set $IF up"
  step net-ping "$IF $mac mtu $mtu: ping $VUT_PEER"
  first_contact
  ping -i 0.2 "$VUT_PEER" &
  pinger=$!
  step netmigratepeer-sending "$(stat -c %s /tmp/tx.bin) bytes sha256=$tx_sha to $VUT_PEER:5001, $chunks writes of $VUT_CHUNK, ${VUT_PAUSE_MS} ms apart"
  pause_us=$((VUT_PAUSE_MS * 1000))
  {
    i=0
    while [ $i -lt $chunks ]; do
      dd if=/tmp/tx.bin bs=$VUT_CHUNK skip=$i count=1 2>/dev/null
      i=$((i + 1))
      [ $((i % 16)) = 0 ] && echo "VUT-STEP netmigratepeer-sent $i" >&2
      usleep $pause_us
    done
  } | timeout 300 nc "$VUT_PEER" 5001 > /dev/null 2>/tmp/nc.err || fail "nc to $VUT_PEER:5001: $(cat /tmp/nc.err)"
  step netmigratepeer-sent-all "$chunks writes"
  sleep "$VUT_LINGER"
  kill -INT $pinger
  wait $pinger
  finish "\"if\":\"$IF\",\"mac\":\"$mac\",\"mtu\":$mtu,\"features\":\"$features\",\"tx\":{\"bytes\":$(stat -c %s /tmp/tx.bin),\"sha256\":\"$tx_sha\"}"
}

job_blk() {
  DEV=/dev/$VUT_DEV
  SYS=/sys/block/$VUT_DEV
  step wait-device "$DEV"
  i=0
  while [ ! -b "$DEV" ] || [ ! -e "$SYS/size" ]; do
    i=$((i + 1))
    [ $i -gt 200 ] && fail "$DEV did not appear within 20 s ($(ls /sys/block | tr '\n' ' '))"
    usleep 100000
  done

  for v in VUT_BYTES VUT_OFFSET VUT_SEED VUT_TAIL VUT_DISCARD VUT_BS VUT_FLUSH; do
    eval "val=\$$v"
    is_uint "$val" || fail "$v=$val is not an unsigned integer"
  done
  [ $((VUT_BYTES % 4096)) -eq 0 ] || fail "vut.bytes must be a multiple of 4096"
  [ $((VUT_OFFSET % 4096)) -eq 0 ] || fail "vut.offset must be a multiple of 4096"

  step sysfs "$SYS"
  sectors=$(cat "$SYS/size")
  lbs=$(cat "$SYS/queue/logical_block_size")
  pbs=$(cat "$SYS/queue/physical_block_size")
  queues=$(ls "$SYS/mq" 2>/dev/null | wc -l)
  disk_bytes=$((sectors * 512))
  features=$(cat "$SYS/device/features" 2>/dev/null)
  ncpu=$(nproc)
  info="\"dev\":\"$VUT_DEV\",\"cpus\":$ncpu,\"sectors\":$sectors,\"size_bytes\":$disk_bytes"
  info="$info,\"logical_block_size\":$lbs,\"physical_block_size\":$pbs,\"queues\":$queues"
  info="$info,\"ro\":$(rdn "$SYS/ro"),\"write_cache\":$(rds "$SYS/queue/write_cache")"
  info="$info,\"discard_max_bytes\":$(rdn "$SYS/queue/discard_max_bytes")"
  info="$info,\"discard_granularity\":$(rdn "$SYS/queue/discard_granularity")"
  info="$info,\"write_zeroes_max_bytes\":$(rdn "$SYS/queue/write_zeroes_max_bytes")"
  info="$info,\"max_hw_sectors_kb\":$(rdn "$SYS/queue/max_hw_sectors_kb")"
  info="$info,\"max_segments\":$(rdn "$SYS/queue/max_segments")"
  info="$info,\"nr_requests\":$(rdn "$SYS/queue/nr_requests")"
  info="$info,\"serial\":$(rds "$SYS/serial"),\"features\":$(rds "$SYS/device/features")"
  stat0=$(cat "$SYS/stat")
  echo "VUT-STEP sysfs $info"

  if [ "$(cat "$SYS/ro")" != "0" ]; then
    finish "$info,\"data\":\"skipped (read-only)\""
  fi

  step check "offset=$VUT_OFFSET bytes=$VUT_BYTES within $disk_bytes"
  end=$((VUT_OFFSET + VUT_BYTES))
  [ $end -le $disk_bytes ] || fail "pattern region ends at $end, beyond the disk ($disk_bytes bytes)"

  data="null"
  if [ "$VUT_BYTES" -gt 0 ]; then
    write_verify data "$VUT_OFFSET" "$VUT_BYTES" "$VUT_BS"
    data="{\"offset\":$VUT_OFFSET,\"bytes\":$VUT_BYTES,\"seed\":$VUT_SEED,\"sha256\":\"$WV_SHA\",\"verified\":true}"
  fi

  tail="null"
  tail_off=$(( (disk_bytes / 4096 - 1) * 4096 ))
  if [ "$VUT_TAIL" != 0 ] && [ $disk_bytes -ge 8192 ] && [ $tail_off -ge $end ]; then
    write_verify tail "$tail_off" 4096 4096
    tail="{\"offset\":$tail_off,\"bytes\":4096,\"sha256\":\"$WV_SHA\",\"verified\":true}"
  fi

  # FLUSH: with write_cache "write through" (the device's config writeback byte is 0) the kernel
  # drops flushes before they reach the device. So when VIRTIO_BLK_F_FLUSH (bit 9) is negotiated we
  # switch to "write back" first: through /sys/block/DEV/cache_type (a virtio config write, i.e.
  # VHOST_USER_SET_CONFIG, needs VIRTIO_BLK_F_CONFIG_WCE bit 11), else queue/write_cache. Then an
  # fsync of the block device sends a FLUSH request.
  wc=$(cat "$SYS/queue/write_cache")
  has_flush=false
  [ "$(echo "$features" | cut -c10)" = 1 ] && has_flush=true
  forced=false
  if [ "$VUT_FLUSH" != 0 ] && [ "$has_flush" = true ] && [ "$wc" != "write back" ]; then
    if [ "$(echo "$features" | cut -c12)" = 1 ] && [ -w "$SYS/cache_type" ]; then
      echo "write back" 2>/dev/null > "$SYS/cache_type" && forced='"cache_type"'
    fi
    if [ "$forced" = false ]; then
      echo "write back" 2>/dev/null > "$SYS/queue/write_cache" && forced='"queue/write_cache"'
    fi
    [ "$forced" != false ] && [ "$(cat "$SYS/queue/write_cache")" = "write back" ] ||
      fail "cannot switch $DEV to write back caching (cache_type: $(cat "$SYS/cache_type" 2>&1))"
  fi
  step flush "feature=$has_flush write_cache=$wc forced_write_back=$forced: sync + fsync + blockdev --flushbufs"
  f0=$(awk '{print $16}' "$SYS/stat")
  sync || fail "sync failed"
  dd if=/dev/null of="$DEV" count=0 conv=notrunc,fsync 2>/tmp/flush.err || fail "fsync of $DEV: $(cat /tmp/flush.err)"
  blockdev --flushbufs "$DEV" 2>/tmp/flush.err || fail "blockdev --flushbufs: $(cat /tmp/flush.err)"
  f1=$(awk '{print $16}' "$SYS/stat")
  [ "$has_flush" = true ] && [ "$(cat "$SYS/queue/write_cache")" = "write back" ] && [ $((f1 - f0)) -lt 1 ] &&
    fail "fsync completed but no FLUSH request reached the device (stat flushes $f0 -> $f1)"
  flush="{\"feature\":$has_flush,\"write_cache\":\"$wc\",\"forced_write_back\":$forced,\"requests\":$((f1 - f0))}"

  discard="\"skipped\""
  dmax=$(cat "$SYS/queue/discard_max_bytes" 2>/dev/null || echo 0)
  dlen=$VUT_DISCARD
  [ $((end + dlen)) -gt $disk_bytes ] && dlen=$((disk_bytes - end))
  if [ "$VUT_DISCARD" = 0 ] || [ "$dlen" -le 0 ]; then
    step discard "skipped"
  elif ! command -v blkdiscard >/dev/null; then
    step discard "unavailable (no blkdiscard)"
    discard="\"unavailable\""
  elif [ "$dmax" = 0 ]; then
    step discard "unsupported by the device (discard_max_bytes=0)"
    discard="\"unsupported\""
  else
    step discard "blkdiscard -o $end -l $dlen"
    blkdiscard -o "$end" -l "$dlen" "$DEV" 2>/tmp/discard.err ||
      fail "blkdiscard -o $end -l $dlen: $(cat /tmp/discard.err)"
    discard="{\"offset\":$end,\"bytes\":$dlen}"
  fi

  # Spread reads over every CPU so that every request virtqueue carries requests (blk-mq maps CPU
  # c to queue c when there are as many queues as CPUs), then count each virtqueue's completion
  # interrupts (MSI-X vector "virtioN-req.Q" in /proc/interrupts, summed over CPUs).
  step spread "O_DIRECT reads from each of $ncpu CPUs"
  c=0
  while [ $c -lt "$ncpu" ]; do
    taskset -c $c dd if="$DEV" of=/dev/null bs=4096 count=64 skip=$((c * 64)) iflag=direct 2>/dev/null &
    c=$((c + 1))
  done
  wait
  vdev=$(basename "$(readlink "$SYS/device")")
  vqi=$(awk -v d="$vdev-req." '
    index($NF, d) == 1 { q = substr($NF, length(d) + 1); s = 0
      for (i = 2; i <= NF; i++) { if ($i ~ /^[0-9]+$/) s += $i; else break }
      n[q] = s; if (q + 1 > max) max = q + 1 }
    END { out = ""; for (q = 0; q < max; q++) out = out (q ? "," : "") (q in n ? n[q] : "null"); print "[" out "]" }
  ' /proc/interrupts)
  step spread "$vdev request-queue interrupts: $vqi"

  st="$(stat_json "$stat0" "$(cat "$SYS/stat")")"
  step done "stat $st"
  finish "$info,\"data\":$data,\"tail\":$tail,\"flush\":$flush,\"discard\":$discard,\"vq_interrupts\":$vqi,\"stat\":$st"
}

# writer W SEED OFFSET BYTES BS: /tmp/pW (already generated) -> device, read back, compare;
# the verdict goes to /tmp/sW ("ok" or what failed).
writer() {
  w=$1; off=$3; len=$4; bs=$5
  dd if=/tmp/p$w of="$DEV" bs="$bs" seek="$off" oflag=direct,seek_bytes conv=notrunc,fsync 2>/tmp/e$w ||
    { echo "write failed: $(cat /tmp/e$w)" > /tmp/s$w; return; }
  dd if="$DEV" of=/tmp/r$w bs="$bs" skip="$off" count="$len" iflag=direct,skip_bytes,count_bytes 2>/tmp/e$w ||
    { echo "read failed: $(cat /tmp/e$w)" > /tmp/s$w; return; }
  if cmp -s /tmp/p$w /tmp/r$w; then
    echo ok > /tmp/s$w
  else
    echo "data mismatch (seed $2): $(first_diff /tmp/p$w /tmp/r$w)" > /tmp/s$w
  fi
}

job_restart() {
  DEV=/dev/$VUT_DEV
  SYS=/sys/block/$VUT_DEV
  step wait-device "$DEV"
  i=0
  while [ ! -b "$DEV" ] || [ ! -e "$SYS/size" ]; do
    i=$((i + 1))
    [ $i -gt 200 ] && fail "$DEV did not appear within 20 s ($(ls /sys/block | tr '\n' ' '))"
    usleep 100000
  done
  for v in VUT_BYTES VUT_OFFSET VUT_SEED VUT_BS VUT_WRITERS VUT_ROUNDS; do
    eval "val=\$$v"
    is_uint "$val" || fail "$v=$val is not an unsigned integer"
  done
  [ $((VUT_BYTES % 4096)) -eq 0 ] && [ "$VUT_BYTES" -gt 0 ] || fail "vut.bytes must be a positive multiple of 4096"
  [ $((VUT_OFFSET % 4096)) -eq 0 ] || fail "vut.offset must be a multiple of 4096"
  disk_bytes=$(($(cat "$SYS/size") * 512))
  queues=$(ls "$SYS/mq" 2>/dev/null | wc -l)
  end=$((VUT_OFFSET + VUT_WRITERS * VUT_BYTES))
  [ $end -le $disk_bytes ] || fail "writers' regions end at $end, beyond the disk ($disk_bytes bytes)"
  r=1
  while [ $r -le "$VUT_ROUNDS" ]; do
    step round-$r-gen "writers=$VUT_WRITERS bytes=$VUT_BYTES"
    w=0
    while [ $w -lt "$VUT_WRITERS" ]; do
      off=$((VUT_OFFSET + w * VUT_BYTES))
      gen_pattern $((VUT_SEED + r * VUT_WRITERS + w)) $((off / 4096)) $((VUT_BYTES / 4096)) > /tmp/p$w ||
        fail "pattern generation failed"
      rm -f /tmp/s$w
      w=$((w + 1))
    done
    step round-$r-io "writers=$VUT_WRITERS"
    w=0
    while [ $w -lt "$VUT_WRITERS" ]; do
      writer $w $((VUT_SEED + r * VUT_WRITERS + w)) $((VUT_OFFSET + w * VUT_BYTES)) "$VUT_BYTES" "$VUT_BS" &
      w=$((w + 1))
    done
    wait
    w=0
    while [ $w -lt "$VUT_WRITERS" ]; do
      st=$(cat /tmp/s$w 2>/dev/null)
      [ "$st" = ok ] || fail "round $r writer $w: ${st:-no verdict}"
      w=$((w + 1))
    done
    step round-$r-verified "ok"
    r=$((r + 1))
  done
  rm -f /tmp/p* /tmp/r*
  finish "\"queues\":$queues,\"writers\":$VUT_WRITERS,\"rounds\":$VUT_ROUNDS,\"bytes\":$VUT_BYTES,\"offset\":$VUT_OFFSET,\"seed\":$VUT_SEED"
}

uptime_s() {
  cut -d. -f1 /proc/uptime
}

job_migrate() {
  DEV=/dev/$VUT_DEV
  step wait-device "$DEV"
  i=0
  while [ ! -b "$DEV" ]; do
    i=$((i + 1))
    [ $i -gt 200 ] && fail "$DEV did not appear within 20 s"
    usleep 100000
  done
  is_uint "$VUT_BYTES" && is_uint "$VUT_SECONDS" && is_uint "$VUT_HOLD" || fail "vut.bytes / vut.seconds / vut.hold must be numbers"
  chunk=65536
  n=$((VUT_BYTES / chunk))
  [ $n -gt 1 ] && [ $((n * chunk)) -eq "$VUT_BYTES" ] && [ $((n % 2)) -eq 0 ] ||
    fail "vut.bytes must be a positive multiple of $((2 * chunk))"

  start=$(uptime_s)
  end=$((start + VUT_SECONDS))
  step migrate-loop "chunks=$n until uptime $end"
  rounds=0
  reads=0
  writes=0
  cached=0
  tick=$start
  half=$((VUT_BYTES / 2))
  # Some memory is always being written, even while the loop waits: QEMU then never finds the
  # guest clean and so never ends the migration on its own; the host decides when (see the test).
  ( while :; do echo x > /tmp/spin; usleep 20000; done ) &
  spinner=$!
  while [ "$(uptime_s)" -lt $end ]; do
    # New random contents (O_DIRECT), reference copy in RAM.
    dd if=/dev/urandom of=/tmp/ref bs=$chunk count=$n 2>/dev/null || fail "urandom"
    dd if=/tmp/ref of="$DEV" bs=$chunk count=$n oflag=direct conv=notrunc 2>/tmp/dd.err ||
      fail "write: $(cat /tmp/dd.err)"
    writes=$((writes + n))
    # The held buffer: dd reads the region with O_DIRECT in two halves into ONE buffer and writes
    # them to a fifo. The reader takes the first half after 3 s (meanwhile QEMU copies dd's
    # freshly zeroed buffer pages, the guest being idle), so the second half is DMA'd into pages
    # the guest CPU never writes again; then it waits vut.hold seconds (the host lets the VM
    # switch over now) before reading the rest out of dd's buffer. A page the back-end wrote
    # without marking it in the dirty log reaches the destination with the first half's bytes.
    rm -f /tmp/fifo /tmp/rd1 /tmp/rd2 /tmp/ddw.err
    mkfifo /tmp/fifo
    (
      {
        sleep 3
        dd bs=$half count=1 iflag=fullblock of=/tmp/rd1 2>/dev/null
        usleep 300000
        echo "VUT-STEP migrate-filled round $rounds"
        sleep "$VUT_HOLD"
        cat > /tmp/rd2
      } < /tmp/fifo
    ) &
    reader=$!
    dd if="$DEV" of=/tmp/fifo bs=$half count=2 iflag=direct 2>/tmp/ddw.err &
    writer=$!
    sleep 4
    # While the second half waits in dd's buffer: O_DIRECT re-reads into fresh files, compared.
    hold=$(($(uptime_s) + VUT_HOLD - 1))
    c=0
    while [ "$(uptime_s)" -lt $hold ]; do
      rm -f /tmp/rd
      dd if="$DEV" of=/tmp/rd bs=$chunk skip=$c count=1 iflag=direct 2>/tmp/dd.err || fail "read chunk $c: $(cat /tmp/dd.err)"
      dd if=/tmp/ref of=/tmp/want bs=$chunk skip=$c count=1 2>/dev/null
      cmp -s /tmp/rd /tmp/want ||
        fail "O_DIRECT read of chunk $c differs (round $rounds, $reads good reads): $(first_diff /tmp/want /tmp/rd)"
      reads=$((reads + 1))
      c=$(((c + 1) % n))
    done
    wait $writer || fail "held read: $(cat /tmp/ddw.err)"
    wait $reader
    cat /tmp/rd1 /tmp/rd2 > /tmp/rd
    cmp -s /tmp/rd /tmp/ref || fail "held O_DIRECT buffer differs (round $rounds): $(first_diff /tmp/ref /tmp/rd)"
    cached=$((cached + 1))
    rounds=$((rounds + 1))
    now=$(uptime_s)
    if [ $((now - tick)) -ge 2 ]; then
      tick=$now
      step migrate-tick "rounds=$rounds reads=$reads"
    fi
  done
  kill $spinner
  step migrate-verify "whole region, O_DIRECT"
  dd if="$DEV" of=/tmp/all bs=$chunk count=$n iflag=direct 2>/tmp/dd.err || fail "final read: $(cat /tmp/dd.err)"
  cmp -s /tmp/all /tmp/ref || fail "final read differs: $(first_diff /tmp/ref /tmp/all)"
  sha=$(sha256sum < /tmp/ref | cut -d' ' -f1)
  finish "\"bytes\":$VUT_BYTES,\"rounds\":$rounds,\"reads\":$reads,\"writes\":$writes,\"held_checks\":$cached,\"sha256\":\"$sha\""
}

case "$JOB" in
  blk) job_blk ;;
  restart) job_restart ;;
  migrate) job_migrate ;;
  net) job_net ;;
  netserve) job_netserve ;;
  netmigrate) job_netmigrate ;;
  netmigratepeer) job_netmigratepeer ;;
  boot) job_boot ;;
  *) fail "unknown job vut.test=$JOB" ;;
esac
fail "job $JOB returned without a result"
