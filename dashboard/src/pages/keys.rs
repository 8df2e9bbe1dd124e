//! Key status, for `admin` (the vault refuses every other role): the vault's seal, its data
//! key versions with their use, and any rewrap under way. The dashboard shows; it changes no
//! key (rotation stays with `tandemctl keys`).

use std::fmt::Write as _;

use tandem_proto::tandem::vault::v1 as vault;

use super::{Page, bare};
use crate::api::{Api, as_person};
use crate::forms::Visit;
use crate::html::{page, time};

/// `/keys`.
pub async fn keys(api: &Api, visit: &Visit<'_>) -> Page {
    let person = visit.person;
    let status = api
        .keys()
        .get_key_status(as_person(vault::GetKeyStatusRequest {}, person))
        .await?
        .into_inner();
    let mut body = String::new();
    if let Some(seal) = &status.seal {
        let state = bare(
            vault::SealState::try_from(seal.state)
                .unwrap_or_default()
                .as_str_name(),
            "SEAL_STATE_",
        );
        let _ = writeln!(
            body,
            "<dl>\n<dt>Seal</dt><dd data-field=\"seal\">{state}</dd>\n\
             <dt>Root key version</dt><dd>{root}</dd>\n<dt>Unsealed</dt><dd>{unsealed}</dd>\n</dl>",
            root = seal.root_key_version,
            unsealed = time(seal.unseal_time.as_ref()),
        );
    }
    body.push_str(
        "<table class=\"data-keys\">\n<caption>Data key versions</caption>\n<thead><tr>\
         <th scope=\"col\">Version</th><th scope=\"col\">State</th><th scope=\"col\">Rows</th>\
         <th scope=\"col\">Encryptions</th><th scope=\"col\">Budget</th>\
         <th scope=\"col\">Root key</th><th scope=\"col\">Created</th></tr></thead>\n<tbody>\n",
    );
    for key in &status.data_keys {
        let state = bare(
            vault::DataKeyState::try_from(key.state)
                .unwrap_or_default()
                .as_str_name(),
            "DATA_KEY_STATE_",
        );
        let _ = writeln!(
            body,
            "<tr><td>{version}</td><td>{state}</td><td>{rows}</td><td>{used}</td>\
             <td>{budget}</td><td>{root}</td><td>{created}</td></tr>",
            version = key.version,
            rows = key.rows,
            used = key.encryptions,
            budget = key.encryption_budget,
            root = key.root_key_version,
            created = time(key.create_time.as_ref()),
        );
    }
    body.push_str("</tbody>\n</table>\n");
    if let Some(rewrap) = &status.rewrap {
        let state = bare(
            vault::RewrapState::try_from(rewrap.state)
                .unwrap_or_default()
                .as_str_name(),
            "REWRAP_STATE_",
        );
        let _ = writeln!(
            body,
            "<h2>Rewrap</h2>\n<p>{state}: {done} of {total} rows to version {target}, \
             {remaining} left.</p>",
            done = rewrap.rows_done,
            total = rewrap.rows_total,
            target = rewrap.target_version,
            remaining = rewrap.rows_remaining,
        );
    }
    Ok(page("Keys", person, &body))
}
