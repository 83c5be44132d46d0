//! `authd reseal`: re-seals every sealed value (signing keys, TOTP secrets,
//! OAuth client secrets)
//! under the current master key, opening them with the current or a previous
//! one (`AUTHD_MASTER_KEY_PREVIOUS`). Run it after rotating the master key;
//! once it reports nothing left under an old key, the old key can go.

use authd_core::crypto::SealContext;
use authd_core::{Result, TenantId};
use authd_store::TotpReseal;

use crate::Deps;

/// What a reseal changed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ResealReport {
    pub tenants: u64,
    pub signing_keys: u64,
    pub totp_secrets: u64,
    pub oauth_client_secrets: u64,
}

fn reseal_value(deps: &Deps, tenant: TenantId, purpose: &str, row: &str, sealed: &str) -> Result<Option<String>> {
    if !deps.keyring.needs_reseal(sealed) {
        return Ok(None);
    }
    deps.keyring.reseal(sealed, &SealContext { tenant, purpose, row }).map(Some)
}

/// Re-seals everything sealed under a non-current master key, tenant by
/// tenant (each tenant's values in one transaction per kind).
pub async fn reseal_all(deps: &Deps) -> Result<ResealReport> {
    let mut report = ResealReport::default();
    let mut after = None;
    loop {
        let page = deps.store.list_tenants(after, 100).await?;
        let Some(last) = page.last() else { break };
        after = Some(last.id);
        for tenant in page {
            report.tenants += 1;
            let mut keys = Vec::new();
            for k in deps.store.signing_keys(tenant.id).await? {
                if let Some(v) =
                    reseal_value(deps, tenant.id, crate::keyset::SEAL_PURPOSE, &k.kid, &k.private_key_sealed)?
                {
                    keys.push((k.kid, v));
                }
            }
            if !keys.is_empty() {
                report.signing_keys += keys.len() as u64;
                deps.store.reseal_signing_keys(tenant.id, &keys).await?;
            }
            let mut secrets = Vec::new();
            for (user, active, pending) in deps.store.sealed_totp_secrets(tenant.id).await? {
                let row = user.to_string();
                let purpose = crate::mfa::SEAL_PURPOSE;
                let new_active = match &active {
                    Some(s) => reseal_value(deps, tenant.id, purpose, &row, s)?,
                    None => None,
                };
                let new_pending = match &pending {
                    Some(s) => reseal_value(deps, tenant.id, purpose, &row, s)?,
                    None => None,
                };
                if new_active.is_some() || new_pending.is_some() {
                    secrets.push(TotpReseal {
                        user,
                        active: new_active.or_else(|| active.clone()),
                        pending: new_pending.or_else(|| pending.clone()),
                        was_active: active,
                        was_pending: pending,
                    });
                }
            }
            if !secrets.is_empty() {
                // A row changed since it was read (an enrollment landed) is
                // left as it is: it was sealed under the current key.
                report.totp_secrets += deps.store.reseal_totp_secrets(tenant.id, &secrets).await?;
            }
            report.oauth_client_secrets += reseal_oauth_secrets(deps, tenant.id).await?;
        }
    }
    Ok(report)
}

/// OAuth client secrets: each provider re-saved with its secret re-sealed
/// (and everything else as it was), with an `oauth_provider.changed` event
/// saying so, in one transaction per provider.
async fn reseal_oauth_secrets(deps: &Deps, tenant: TenantId) -> Result<u64> {
    let mut n = 0;
    for mut p in deps.store.oauth_providers(tenant).await? {
        let Some(sealed) = &p.client_secret_sealed else { continue };
        let Some(new) = reseal_value(deps, tenant, crate::oauth::SEAL_PURPOSE, &p.name, sealed)? else { continue };
        p.client_secret_sealed = Some(new);
        let event = crate::audit::event(
            crate::audit::kinds::OAUTH_PROVIDER_CHANGED,
            &crate::audit::RequestMeta::default(),
            None,
            None,
            Some(serde_json::json!({ "provider": p.name, "resealed": true })),
        );
        deps.store.upsert_oauth_provider(tenant, &p, &event).await?;
        n += 1;
    }
    Ok(n)
}
