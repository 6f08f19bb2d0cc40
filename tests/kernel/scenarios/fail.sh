# A scenario that fails on purpose: tests/test-kernel-smoke.sh checks that
# vm.sh reports the failure (a harness that cannot fail proves nothing).
. /vmlib.sh
ok "this one passes"
not_ok "deliberate failure" "(expected: the harness must report this)"
done_testing
