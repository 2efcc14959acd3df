//! Template refs (spec §4.1) within one owner's namespace: `tmpl_...`, `name`, `name:tag`,
//! `name:tb_...`, and the same with a `namespace/` prefix.

use crate::error::ApiError;
use nullspace_api::BuildStatus;

use crate::store::{BuildRecord, BuildStore, TemplateRow};

/// What a ref resolved to.
#[derive(Clone, Debug)]
pub struct Resolved {
    /// The template.
    pub template: TemplateRow,
    /// The tag the ref named (or the default tag), `None` for an exact `tb_...` ref.
    pub tag: Option<String>,
    /// The ready build it points at.
    pub build: BuildRecord,
}

/// The tag a bare name means: `default` when present, else the first tag.
pub fn default_tag(template: &TemplateRow) -> Option<String> {
    template
        .tags
        .iter()
        .find(|(t, _)| t == "default")
        .or_else(|| template.tags.first())
        .map(|(t, _)| t.clone())
}

/// Resolves `reference` for `owner`; anything outside the owner's namespace is not found.
pub fn resolve_ref(
    store: &dyn BuildStore,
    owner: &str,
    reference: &str,
) -> Result<Resolved, ApiError> {
    let not_found = || ApiError::template_not_found(reference);
    let unqualified = match reference.split_once('/') {
        Some((namespace, rest)) if namespace == owner => rest,
        Some(_) => return Err(not_found()),
        None => reference,
    };
    let (name, selector) = match unqualified.split_once(':') {
        Some((name, selector)) => (name, Some(selector)),
        None => (unqualified, None),
    };
    let template = store.template(owner, name)?.ok_or_else(not_found)?;
    let (tag, build_id) = match selector {
        Some(build_id) if build_id.starts_with("tb_") => (None, build_id.to_string()),
        Some(tag) => {
            let (_, build) = template
                .tags
                .iter()
                .find(|(t, _)| t == tag)
                .ok_or_else(not_found)?;
            (Some(tag.to_string()), build.clone())
        }
        None => {
            let tag = default_tag(&template).ok_or_else(not_found)?;
            let build = template
                .tags
                .iter()
                .find(|(t, _)| *t == tag)
                .map(|(_, b)| b.clone())
                .ok_or_else(not_found)?;
            (Some(tag), build)
        }
    };
    let build = store
        .build(Some(owner), &build_id)?
        .filter(|b| b.template_id == template.id && b.status == BuildStatus::Ready)
        .ok_or_else(not_found)?;
    Ok(Resolved {
        template,
        tag,
        build,
    })
}
