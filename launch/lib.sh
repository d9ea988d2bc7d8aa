# Sourced by the launchers: print each command exactly, and run it unless --dry-run.

DRY_RUN=${DRY_RUN:-0}

# One shell word per argument, quoted only where needed (like Python's shlex.quote), so a
# printed line can be pasted into a shell or split back into the same arguments.
quote() {
  local words=() a
  for a in "$@"; do
    if [[ $a =~ ^[A-Za-z0-9_@%+=:,./-]+$ ]]; then
      words+=("$a")
    else
      words+=("'${a//\'/\'\"\'\"\'}'")
    fi
  done
  printf '%s\n' "${words[*]}"
}

# run CMD...: with --dry-run prints CMD on stdout and runs nothing; otherwise prints it on
# stderr after '+ ' and runs it.
run() {
  if ((DRY_RUN)); then
    quote "$@"
    return 0
  fi
  echo "+ $(quote "$@")" >&2
  "$@"
}

# note TEXT: a comment line in the dry-run listing (stderr otherwise, so stdout stays clean).
note() {
  if ((DRY_RUN)); then echo "# $*"; else echo "# $*" >&2; fi
}

die() {
  echo "${LAUNCHER:-launch}: error: $*" >&2
  exit 2
}
