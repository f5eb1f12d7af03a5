#!/usr/bin/env bash
# A single-node Slurm on this machine, with accounting, for testing sweeps through Hydra's submitit launcher.
#
#   scripts/slurm_local.sh up       install Debian's packages when missing (slurm-wlm, slurmdbd, munge,
#                                   mariadb-server), write the configs for this host, start munged, MariaDB,
#                                   slurmdbd, slurmctld and slurmd, wait until the node is idle
#   scripts/slurm_local.sh status   the daemons this script started, and sinfo
#   scripts/slurm_local.sh down     stop exactly the daemons it started (their pid files), idempotent
#
# Needs root (daemons, /etc). Accounting (slurmdbd + MariaDB) is what lets `sacct` answer, so submitit reads job
# states without "Bypassing sacct error" warnings. State lives in $SLURM_LOCAL_DIR (default /var/tmp/bench-slurm).
set -euo pipefail

DIR=${SLURM_LOCAL_DIR:-/var/tmp/bench-slurm}
HOST=$(hostname -s)
CLUSTER=bench
DB_PASS=bench-local-only  # a local socket-only database of a throw-away test cluster

log() { echo "slurm_local: $*" >&2; }

install() {
  local missing=()
  for bin in slurmctld slurmd slurmdbd munged mariadbd sacct; do command -v "$bin" >/dev/null || missing+=("$bin"); done
  [ ${#missing[@]} -eq 0 ] && return
  log "installing slurm-wlm slurmdbd munge mariadb-server (missing: ${missing[*]})"
  DEBIAN_FRONTEND=noninteractive apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    slurm-wlm slurmdbd slurm-client munge mariadb-server >/dev/null
}

write_configs() {
  local cpus mem
  cpus=$(nproc)
  mem=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 - 1024 ))  # MiB, 1 GiB left to the system
  mkdir -p "$DIR"/{spool/ctld,spool/d,log,run,mysql} /etc/slurm /run/munge /etc/munge
  if [ ! -s /etc/munge/munge.key ]; then
    dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
  fi
  chown -R munge:munge /etc/munge /run/munge 2>/dev/null || true
  chmod 0700 /etc/munge; chmod 0400 /etc/munge/munge.key
  cat > /etc/slurm/slurm.conf <<EOF
ClusterName=$CLUSTER
SlurmctldHost=$HOST
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
MpiDefault=none
ReturnToService=2
StateSaveLocation=$DIR/spool/ctld
SlurmdSpoolDir=$DIR/spool/d
SlurmctldPidFile=$DIR/run/slurmctld.pid
SlurmdPidFile=$DIR/run/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
InactiveLimit=0
KillWait=2
MinJobAge=300
SlurmctldTimeout=30
SlurmdTimeout=30
NodeName=$HOST CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
  cat > /etc/slurm/slurmdbd.conf <<EOF
AuthType=auth/munge
DbdHost=localhost
SlurmUser=root
PidFile=$DIR/run/slurmdbd.pid
LogFile=$DIR/log/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=3306
StorageUser=slurm
StoragePass=$DB_PASS
StorageLoc=slurm_acct_db
EOF
  chmod 0600 /etc/slurm/slurmdbd.conf
}

wait_for() {  # wait_for SECONDS DESCRIPTION COMMAND...
  local seconds=$1 what=$2; shift 2
  for _ in $(seq "$((seconds * 4))"); do "$@" >/dev/null 2>&1 && return 0; sleep 0.25; done
  log "$what did not come up within ${seconds} s (logs: $DIR/log)"; return 1
}

alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

start_mariadb() {
  alive "$DIR/run/mariadb.pid" && return
  if [ ! -d "$DIR/mysql/mysql" ]; then
    mariadb-install-db --user=root --datadir="$DIR/mysql" --auth-root-authentication-method=socket >/dev/null
  fi
  mariadbd --user=root --datadir="$DIR/mysql" --socket="$DIR/run/mysqld.sock" --pid-file="$DIR/run/mariadb.pid" \
    --bind-address=127.0.0.1 --port=3306 --log-error="$DIR/log/mariadb.log" &
  wait_for 60 MariaDB mariadb --socket="$DIR/run/mysqld.sock" -e "select 1"
  mariadb --socket="$DIR/run/mysqld.sock" -e "CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY '$DB_PASS';
    CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY '$DB_PASS';
    GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost'; GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';"
}

up() {
  [ "$(id -u)" -eq 0 ] || { log "needs root (daemons and /etc/slurm)"; exit 1; }
  install
  write_configs
  # root-owned daemons throughout (a throw-away test cluster); --force accepts the package's munge-owned paths
  alive "$DIR/run/munged.pid" || munged --force --pid-file="$DIR/run/munged.pid" 2>/dev/null
  wait_for 20 munged sh -c 'munge -n | unmunge'
  start_mariadb
  alive "$DIR/run/slurmdbd.pid" || slurmdbd
  wait_for 60 slurmdbd sacctmgr -n list cluster
  sacctmgr -i add cluster "$CLUSTER" >/dev/null 2>&1 || true
  alive "$DIR/run/slurmctld.pid" || slurmctld
  alive "$DIR/run/slurmd.pid" || slurmd
  wait_for 90 "node $HOST (idle)" sh -c "sinfo -h -n $HOST -o %T | grep -qx idle"
  log "up: $(sinfo -h -o '%P %D %T %c CPUs %m MiB')"
}

down() {
  for daemon in slurmd slurmctld slurmdbd mariadb munged; do
    local pidfile="$DIR/run/$daemon.pid"
    if alive "$pidfile"; then
      local pid; pid=$(cat "$pidfile")
      kill "$pid"
      for _ in $(seq 80); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
      kill -0 "$pid" 2>/dev/null && kill -9 "$pid"
      log "stopped $daemon ($pid)"
    fi
    rm -f "$pidfile"
  done
}

status() {
  for daemon in munged mariadb slurmdbd slurmctld slurmd; do
    if alive "$DIR/run/$daemon.pid"; then echo "$daemon: running ($(cat "$DIR/run/$daemon.pid"))"; else echo "$daemon: stopped"; fi
  done
  sinfo 2>/dev/null || true
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  status) status ;;
  *) echo "usage: $0 up | down | status" >&2; exit 2 ;;
esac
