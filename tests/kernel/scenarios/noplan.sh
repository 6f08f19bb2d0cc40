# A scenario that ends without done_testing (no plan line): vm.sh must fail.
. /vmlib.sh
ok "a result, then the scenario stops early"
exit 0
