# A scenario that never ends: vm.sh --timeout must kill the VM.
. /vmlib.sh
ok "started"
while :; do sleep 1; done
