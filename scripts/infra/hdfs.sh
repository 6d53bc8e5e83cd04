#!/usr/bin/env bash
# Installs (once) and starts / stops a real single-node HDFS (Apache Hadoop 2.7.3
# NameNode + DataNode, from the jars inside the PyPI source archive of
# pyspark 2.4.8) on 127.0.0.1:8020. Needs Java 17 (on the machine image).
#   scripts/infra/hdfs.sh start   -> prints `export SLUICE_TEST_HDFS_URL=hdfs://127.0.0.1:8020`
#   scripts/infra/hdfs.sh stop
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
CACHE=${SLUICE_INFRA_CACHE:-$HOME/.cache/sluice-infra}
RUN=$ROOT/.infra/run
HOME_DIR=$CACHE/hadoop
JARS=$HOME_DIR/pyspark-2.4.8/deps/jars
CONF=$HOME_DIR/conf
STATE=$RUN/hdfs
PORT=${SLUICE_HDFS_PORT:-8020}
HTTP_PORT=${SLUICE_HDFS_HTTP_PORT:-50070}
mkdir -p "$CACHE" "$RUN"

install() {
  if [ -d "$JARS" ] && ls "$JARS"/hadoop-hdfs-2.7.3.jar >/dev/null 2>&1; then
    return
  fi
  command -v java >/dev/null || { echo "java is needed for HDFS" >&2; exit 1; }
  mkdir -p "$HOME_DIR/dl"
  if [ ! -f "$HOME_DIR/dl/pyspark-2.4.8.tar.gz" ]; then
    echo "downloading the pyspark 2.4.8 source archive (Hadoop 2.7.3 jars)" >&2
    python3 -m pip install -q wheel >&2
    python3 -m pip download -q --no-deps --no-build-isolation --no-binary :all: \
      -d "$HOME_DIR/dl" pyspark==2.4.8 >&2
  fi
  tar xzf "$HOME_DIR/dl/pyspark-2.4.8.tar.gz" -C "$HOME_DIR" pyspark-2.4.8/deps/jars
}

write_conf() {
  mkdir -p "$CONF"/webapps/{hdfs,datanode,secondary}/WEB-INF
  for w in hdfs datanode secondary; do
    echo '<web-app/>' >"$CONF/webapps/$w/WEB-INF/web.xml"
  done
  cat >"$CONF/core-site.xml" <<XML
<configuration>
  <property><name>fs.defaultFS</name><value>hdfs://127.0.0.1:$PORT</value></property>
</configuration>
XML
  cat >"$CONF/hdfs-site.xml" <<XML
<configuration>
  <property><name>dfs.namenode.rpc-address</name><value>127.0.0.1:$PORT</value></property>
  <property><name>dfs.namenode.http-address</name><value>127.0.0.1:$HTTP_PORT</value></property>
  <property><name>dfs.datanode.address</name><value>127.0.0.1:50010</value></property>
  <property><name>dfs.datanode.http.address</name><value>127.0.0.1:50075</value></property>
  <property><name>dfs.datanode.ipc.address</name><value>127.0.0.1:50020</value></property>
  <property><name>dfs.datanode.hostname</name><value>127.0.0.1</value></property>
  <property><name>dfs.namenode.datanode.registration.ip-hostname-check</name><value>false</value></property>
  <property><name>dfs.replication</name><value>1</value></property>
  <property><name>dfs.permissions.enabled</name><value>false</value></property>
  <property><name>dfs.namenode.safemode.extension</name><value>0</value></property>
  <property><name>dfs.webhdfs.enabled</name><value>false</value></property>
  <property><name>dfs.namenode.name.dir</name><value>file://$STATE/name</value></property>
  <property><name>dfs.datanode.data.dir</name><value>file://$STATE/data</value></property>
</configuration>
XML
}

# Runs a Hadoop class; execs, so a backgrounded call's $! is the JVM itself
# and `stop` can kill it.
java_cmd() {
  local cls=$1
  shift
  exec java -Xmx512m \
    --add-opens java.base/java.lang=ALL-UNNAMED \
    --add-opens java.base/java.nio=ALL-UNNAMED \
    --add-opens java.base/sun.nio.ch=ALL-UNNAMED \
    -Dhadoop.log.dir="$STATE/logs" -Dhadoop.root.logger=WARN,console \
    -cp "$CONF:$JARS/*" "$cls" "$@"
}

case "${1:-}" in
start)
  "$0" stop
  if curl -fsS "http://127.0.0.1:$HTTP_PORT/jmx?qry=Hadoop:service=NameNode,name=NameNodeInfo" >/dev/null 2>&1; then
    echo "another NameNode already answers on 127.0.0.1:$HTTP_PORT; stop it first (it is not this checkout's)" >&2
    exit 1
  fi
  install
  write_conf
  mkdir -p "$STATE/logs"
  if [ ! -d "$STATE/name/current" ]; then
    # In a subshell: java_cmd execs the JVM in place of its shell.
    (java_cmd org.apache.hadoop.hdfs.server.namenode.NameNode -format -force -nonInteractive \
      >"$STATE/logs/format.log" 2>&1)
  fi
  java_cmd org.apache.hadoop.hdfs.server.namenode.NameNode >"$STATE/logs/namenode.out" 2>&1 &
  echo $! >"$RUN/hdfs-namenode.pid"
  java_cmd org.apache.hadoop.hdfs.server.datanode.DataNode >"$STATE/logs/datanode.out" 2>&1 &
  echo $! >"$RUN/hdfs-datanode.pid"
  for _ in $(seq 1 180); do
    info=$(curl -fsS "http://127.0.0.1:$HTTP_PORT/jmx?qry=Hadoop:service=NameNode,name=NameNodeInfo" 2>/dev/null || true)
    if echo "$info" | grep -q '"Safemode" : ""' && echo "$info" | grep -q 'infoAddr'; then
      echo "export SLUICE_TEST_HDFS_URL=hdfs://127.0.0.1:$PORT"
      exit 0
    fi
    sleep 0.5
  done
  echo "HDFS did not become ready; logs:" >&2
  tail -n 30 "$STATE/logs/namenode.out" "$STATE/logs/datanode.out" >&2
  exit 1
  ;;
stop)
  for role in namenode datanode; do
    if [ -f "$RUN/hdfs-$role.pid" ]; then
      pid=$(cat "$RUN/hdfs-$role.pid")
      kill "$pid" 2>/dev/null || true
      # Wait for the JVM to exit so its ports are free for the next start.
      for _ in $(seq 1 60); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.25
      done
      kill -9 "$pid" 2>/dev/null || true
      rm -f "$RUN/hdfs-$role.pid"
    fi
  done
  ;;
*)
  echo "usage: $0 start|stop" >&2
  exit 2
  ;;
esac
