"""Write-back: the journal of closed files, the upload scheduler, conflicts, and the give-backs
owed by renames. Everything here survives a crash on local disk and is settled in the bucket."""
