# Vault/OpenBao ACL policy of the Sovereign control plane (AppRole "sovereign-control-plane").
#
# Least privilege. The control plane creates, reads and rotates per-enclave transit keys and uses
# them (data keys, encrypt, decrypt, rewrap); it signs and verifies audit checkpoints with the
# Ed25519 key "audit-checkpoints" and reads its public key; it reads non-key configuration from
# KV v2. It may NOT delete keys or change their configuration: crypto-erase is the worker's job
# (worker.hcl), so a compromised API process cannot destroy enclave data, nor make a key
# exportable. No sys/* and no auth/* paths except renewing and looking up its own token; the
# role sets token_no_default_policy, so the "default" policy adds nothing either.
#
# One block per security-domain transit mount. ACL globs only match at the end of a path and
# "+" only matches a whole segment, so "sovereign-*/keys/..." cannot be written: adding a
# domain (e.g. a classified tenant's mount) means copying a block here and in worker.hcl.
# bootstrap_dev_vault refuses mounts that these files do not name.

# --- sovereign-civilian: keys of civilian tenants' enclaves -------------------------------------
path "sovereign-civilian/keys/+" {
  capabilities = ["create", "read", "update"]
  # Whatever the caller asks: AES-256-GCM, never exportable, never a plaintext backup.
  allowed_parameters = {
    "type"                   = ["aes256-gcm96"]
    "exportable"             = [false]
    "allow_plaintext_backup" = [false]
  }
}
path "sovereign-civilian/keys/+/rotate" {
  capabilities = ["update"]
}
path "sovereign-civilian/datakey/plaintext/+" {
  capabilities = ["update"]
}
path "sovereign-civilian/encrypt/+" {
  capabilities = ["update"]
}
path "sovereign-civilian/decrypt/+" {
  capabilities = ["update"]
}
path "sovereign-civilian/rewrap/+" {
  capabilities = ["update"]
}

# --- sovereign-defence: keys of the defence tenant's enclaves -----------------------------------
path "sovereign-defence/keys/+" {
  capabilities = ["create", "read", "update"]
  allowed_parameters = {
    "type"                   = ["aes256-gcm96"]
    "exportable"             = [false]
    "allow_plaintext_backup" = [false]
  }
}
path "sovereign-defence/keys/+/rotate" {
  capabilities = ["update"]
}
path "sovereign-defence/datakey/plaintext/+" {
  capabilities = ["update"]
}
path "sovereign-defence/encrypt/+" {
  capabilities = ["update"]
}
path "sovereign-defence/decrypt/+" {
  capabilities = ["update"]
}
path "sovereign-defence/rewrap/+" {
  capabilities = ["update"]
}

# --- sovereign-audit: checkpoint signing only ---------------------------------------------------
# Sign and verify with the checkpoint key and read it (the public key is in the answer). No other
# key, no encrypt or data keys, no rotation: rotating the signing key is an operator's act.
path "sovereign-audit/sign/audit-checkpoints" {
  capabilities = ["update"]
}
path "sovereign-audit/verify/audit-checkpoints" {
  capabilities = ["update"]
}
path "sovereign-audit/keys/audit-checkpoints" {
  capabilities = ["read"]
}
# Documents the intent; the more specific paths above take priority over this glob.
path "sovereign-audit/*" {
  capabilities = ["deny"]
}

# --- sovereign-config: non-key configuration (KV v2), read only ---------------------------------
path "sovereign-config/data/*" {
  capabilities = ["read"]
}

# --- its own token ------------------------------------------------------------------------------
path "auth/token/lookup-self" {
  capabilities = ["read"]
}
path "auth/token/renew-self" {
  capabilities = ["update"]
}
