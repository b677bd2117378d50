#!/bin/sh
# berth on a DRBD-replicated filesystem under pacemaker: pcs example, the
# same configuration as berth.crm (read its header, and
# docs/operations/high-availability.md). EXAMPLE: adapt the DRBD resource
# name, device and floating address; pcs >= 0.10 syntax (older pcs: "master"
# instead of "promotable", "Master" instead of "Promoted").
set -eu

pcs resource create p_drbd_berth ocf:linbit:drbd drbd_resource=berth \
    op monitor interval=29s role=Promoted \
    op monitor interval=31s role=Unpromoted \
    op start timeout=240s op stop timeout=100s \
    op promote timeout=90s op demote timeout=90s \
    promotable promoted-max=1 promoted-node-max=1 clone-max=2 clone-node-max=1 notify=true

# The group: filesystem, then address, then berth (started in this order,
# stopped in the reverse, always on one node).
pcs resource create p_fs_berth ocf:heartbeat:Filesystem \
    device=/dev/drbd0 directory=/var/lib/berth fstype=ext4 options=noatime \
    op monitor interval=20s timeout=40s op start timeout=60s op stop timeout=60s \
    --group g_berth
pcs resource create p_ip_berth ocf:heartbeat:IPaddr2 ip=192.0.2.10 cidr_netmask=24 \
    op monitor interval=10s timeout=20s \
    --group g_berth
pcs resource create p_berth systemd:berth \
    op start timeout=90s op stop timeout=60s op monitor interval=10s timeout=20s \
    --group g_berth

# Only where DRBD is Promoted, and only after the promotion.
pcs constraint colocation add g_berth with Promoted p_drbd_berth-clone INFINITY
# shellcheck disable=SC1010 # pcs's own "then", not the shell's
pcs constraint order promote p_drbd_berth-clone then start g_berth
