#!/usr/bin/env bash
# Two "machines" on one box: two network namespaces (each with its own hostname) joined by a veth
# pair, and `mpirun` across them over TCP, shared memory excluded (btl tcp,self) and only the
# pair's addresses used (btl/oob_tcp_if_include). mpirun runs in the first namespace and starts the
# second's daemon through a small launch agent (written by this script) that enters that namespace
# instead of ssh. A 2-rank run of a tiny model must give weights bit-identical to one process
# with grad_accum = 2. Needs root, iproute2, util-linux (unshare) and OpenMPI; removes the
# namespaces on exit.
#   usage: sudo scripts/mpi_netns_check.sh            (PY=python with sos_rs and mpi4py)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PY=${PY:-$([ -x .venv/bin/python ] && echo "$ROOT/.venv/bin/python" || command -v python3)}
[ "$(id -u)" = 0 ] || { echo "mpi_netns_check: needs root (ip netns)" >&2; exit 2; }
for tool in ip unshare mpirun; do
    command -v $tool >/dev/null || { echo "mpi_netns_check: $tool not found" >&2; exit 2; }
done
TAG=sos$$
NS_A=${TAG}a NS_B=${TAG}b IP_A=10.213.7.1 IP_B=10.213.7.2 NET=10.213.7.0/24
WORK=$(mktemp -d /tmp/sos-netns.XXXXXX)
cleanup() {
    ip netns del "$NS_A" 2>/dev/null || true
    ip netns del "$NS_B" 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

echo "== two network namespaces joined by a veth pair"
ip netns add "$NS_A"
ip netns add "$NS_B"
ip link add "${TAG}va" type veth peer name "${TAG}vb"
ip link set "${TAG}va" netns "$NS_A"
ip link set "${TAG}vb" netns "$NS_B"
ip -n "$NS_A" addr add "$IP_A/24" dev "${TAG}va"
ip -n "$NS_B" addr add "$IP_B/24" dev "${TAG}vb"
for ns in "$NS_A" "$NS_B"; do
    ip -n "$ns" link set lo up
done
ip -n "$NS_A" link set "${TAG}va" up
ip -n "$NS_B" link set "${TAG}vb" up
echo "$NS_A: $(ip -n "$NS_A" -brief addr show "${TAG}va")"
echo "$NS_B: $(ip -n "$NS_B" -brief addr show "${TAG}vb")"

echo "== a tiny corpus and config"
mkdir -p "$WORK/texts"
"$PY" - "$WORK/texts" <<'EOF'
import pathlib, random, sys
rng, words = random.Random(0), "the king queen lord lady sword crown night day love war peace sea fire".split()
for i in range(40):
    lines = [" ".join(rng.choice(words) for _ in range(rng.randint(3, 12))) for _ in range(rng.randint(2, 15))]
    pathlib.Path(sys.argv[1], f"doc{i:02d}.txt").write_text("\n".join(lines) + "\n")
EOF
"$PY" -m sos_rs prepare "$WORK/texts" --out "$WORK/data" --vocab-size 300 >/dev/null 2>&1
config() { # name grad_accum
    cat >"$WORK/$1.toml" <<EOF
[model]
d_model = 32
n_layers = 2
n_heads = 4
n_kv_heads = 2
[data]
dir = "$WORK/data"
seq_len = 32
batch_size = 4
[optim]
lr = 3e-3
grad_accum = $2
[run]
out = "$WORK/$1"
steps = 10
checkpoint_every = 0
eval_every = 0
log_every = 5
sample_tokens = 0
threads = 1
EOF
}
config one 2
config two 1
"$PY" -m sos_rs train "$WORK/one.toml" >/dev/null

echo "== mpirun across the namespaces (TCP only, $NET only)"
cat >"$WORK/hosts" <<EOF
$IP_A slots=1
$IP_B slots=1
EOF
# The launch agent: `agent HOST COMMAND...` runs COMMAND in HOST's namespace under its own hostname.
cat >"$WORK/agent.sh" <<EOF
#!/bin/sh
host=\$1; shift
case "\$host" in
    $IP_A) ns=$NS_A ;;
    $IP_B) ns=$NS_B ;;
    *) echo "netns agent: unknown host \$host" >&2; exit 1 ;;
esac
exec ip netns exec "\$ns" unshare --uts sh -c "hostname \$ns; \$*"
EOF
chmod +x "$WORK/agent.sh"
ROOTFLAG=--allow-run-as-root
ip netns exec "$NS_A" unshare --uts sh -c "hostname $NS_A; exec mpirun $ROOTFLAG -np 2 --hostfile $WORK/hosts \
    --mca plm_rsh_agent $WORK/agent.sh --mca plm_rsh_no_tree_spawn 1 \
    --mca btl tcp,self --mca btl_tcp_if_include $NET --mca oob_tcp_if_include $NET \
    --bind-to none -x PYTHONPATH -x PATH \
    $PY -c 'import os, socket; print(\"rank\", os.environ[\"OMPI_COMM_WORLD_RANK\"], \"on\", socket.gethostname(), flush=True)'" \
    | sort
ip netns exec "$NS_A" unshare --uts sh -c "hostname $NS_A; exec mpirun $ROOTFLAG -np 2 --hostfile $WORK/hosts \
    --mca plm_rsh_agent $WORK/agent.sh --mca plm_rsh_no_tree_spawn 1 \
    --mca btl tcp,self --mca btl_tcp_if_include $NET --mca oob_tcp_if_include $NET \
    --bind-to none -x PYTHONPATH -x PATH \
    $PY -m sos_rs train $WORK/two.toml"

echo "== 2 ranks over TCP vs 1 process with grad_accum = 2"
"$PY" - "$WORK" <<'EOF'
import pathlib, sys
import numpy as np
from safetensors.numpy import load_file
work = pathlib.Path(sys.argv[1])
a = load_file(str(work / "one/checkpoints/step-00000010/model.safetensors"))
b = load_file(str(work / "two/checkpoints/step-00000010/model.safetensors"))
same = a.keys() == b.keys() and all(np.array_equal(a[k].view(np.uint32), b[k].view(np.uint32)) for k in a)
print(f"{len(a)} tensors, bit-identical: {same}")
sys.exit(0 if same else 1)
EOF
echo "mpi_netns_check: OK"
