# Vault/OpenBao ACL policy of the Sovereign worker (AppRole "sovereign-worker").
#
# Least privilege for teardown. The worker crypto-erases an enclave's key: it sets
# deletion_allowed (and nothing else: not exportable, not min versions) and deletes the key. It
# cannot create keys, derive data keys or decrypt, so it never sees key material. It signs audit
# checkpoints with "audit-checkpoints" (teardown records the erasure; the audit sequencer runs
# in the worker) and reads that key's public part and version. No sys/* and no auth/*
# paths except renewing and looking up its own token; the role sets token_no_default_policy.
#
# One block per security-domain transit mount, as in control-plane.hcl.

# --- sovereign-civilian --------------------------------------------------------------------------
path "sovereign-civilian/keys/+/config" {
  capabilities = ["update"]
  allowed_parameters = {
    "deletion_allowed" = [true]
  }
}
path "sovereign-civilian/keys/+" {
  capabilities = ["delete"]
}

# --- sovereign-defence ---------------------------------------------------------------------------
path "sovereign-defence/keys/+/config" {
  capabilities = ["update"]
  allowed_parameters = {
    "deletion_allowed" = [true]
  }
}
path "sovereign-defence/keys/+" {
  capabilities = ["delete"]
}

# --- sovereign-audit: sign checkpoints only ------------------------------------------------------
path "sovereign-audit/sign/audit-checkpoints" {
  capabilities = ["update"]
}
# The signer reads the key's latest version (and its public key) before it signs.
path "sovereign-audit/keys/audit-checkpoints" {
  capabilities = ["read"]
}
path "sovereign-audit/*" {
  capabilities = ["deny"]
}

# --- its own token -------------------------------------------------------------------------------
path "auth/token/lookup-self" {
  capabilities = ["read"]
}
path "auth/token/renew-self" {
  capabilities = ["update"]
}
