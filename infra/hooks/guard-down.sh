#!/bin/sh
# predown: azd down deletes whole resource groups, and before its newest releases every resource group the
# deployment touched. keyhealth's deployment puts system topics and role assignments into the resource groups of
# the monitored Key Vaults and namespaces, so an older azd would delete the vaults themselves, and with them the
# keys every namespace needs. Refuse unless the operator has checked their azd asks before deleting groups it did
# not create (see infra/README.md, Removing).
set -eu

if [ "${ALLOW_AZD_DOWN:-false}" = "true" ]; then
    exit 0
fi

cat >&2 <<'MESSAGE'
keyhealth: azd down is blocked. It deletes entire resource groups, and azd versions that do not ask before
deleting groups they did not create would delete the monitored Key Vaults' resource groups.
Remove keyhealth as infra/README.md (Removing) describes, or, with an azd that asks per resource group:
    azd env set ALLOW_AZD_DOWN true && azd down
MESSAGE
exit 1
