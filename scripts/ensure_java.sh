#!/usr/bin/env bash
# Install a Java runtime for the Spark screening engine (PySpark, `ino-adapter screen --engine spark`,
# tests/test_screen_spark.py), only when no Java that Spark supports (17 to 21) is found. Needs root (CI
# runs it as root). Non-interactive. Prints the JAVA_HOME to use (the tests find `java` on PATH or
# under JAVA_HOME; PySpark does the same).
set -euo pipefail

PACKAGE=openjdk-17-jre-headless
MIN_MAJOR=17
MAX_MAJOR=21  # Spark 4 runs on Java 17 and 21 (Spark 3.5 on 8, 11 and 17)

# The major version of a java binary (17 for "17.0.15", 1 for a pre-9 "1.8.0"), or nothing.
java_major() {
  "$1" -version 2>&1 | sed -n 's/.*version "\([0-9][0-9]*\).*/\1/p' | head -n 1
}

# The first java found: $JAVA_HOME/bin/java, then PATH, then Debian's default location.
find_java() {
  local candidate major
  for candidate in "${JAVA_HOME:+$JAVA_HOME/bin/java}" "$(command -v java || true)" \
      /usr/lib/jvm/java-17-openjdk-*/bin/java /usr/lib/jvm/*/bin/java; do
    [ -n "$candidate" ] && [ -x "$candidate" ] || continue
    major=$(java_major "$candidate")
    if [ -n "$major" ] && [ "$major" -ge "$MIN_MAJOR" ] && [ "$major" -le "$MAX_MAJOR" ]; then
      readlink -f "$candidate"
      return 0
    fi
  done
  return 1
}

if ! JAVA_BIN=$(find_java); then
  if [ "$(id -u)" -ne 0 ]; then
    echo "ensure_java: no Java $MIN_MAJOR to $MAX_MAJOR found and installing one needs root (apt-get install $PACKAGE)" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # The JRE's post-install expects man directories that slim images leave out.
  mkdir -p /usr/share/man/man1
  apt-get install -y -qq --no-install-recommends "$PACKAGE" >/dev/null
  JAVA_BIN=$(find_java) || { echo "ensure_java: $PACKAGE installed but no java found" >&2; exit 1; }
  echo "java installed: $("$JAVA_BIN" -version 2>&1 | head -n 1)" >&2
else
  echo "java present: $("$JAVA_BIN" -version 2>&1 | head -n 1)" >&2
fi
# JAVA_HOME is the directory above bin/java (e.g. /usr/lib/jvm/java-17-openjdk-amd64).
dirname "$(dirname "$JAVA_BIN")"
