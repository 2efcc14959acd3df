//! Templates and their refs: list, details by ref, build history, tags, aliases, rename.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use serde_json::Value;

use nullspace_api::request::{AliasBody, AssignTagBody, RenameBody};
use nullspace_api::response::{
    HistoryPage, Promoted, TagList, TagRef, TemplateDetails, TemplateList,
};
use nullspace_api::{BuildBackend, BuildStatus, ErrorEnvelope};

use crate::error::ApiError;
use crate::refs::{default_tag, resolve_ref};
use crate::store::{BuildRecord, HistoryFilter, TemplateRow};
use crate::view;

use super::builds::promote;
use super::extract::{JsonBody, Owner, QueryParams};
use super::{ApiResult, AppState};

/// The build `row`'s default tag points at.
fn default_build(
    state: &AppState,
    owner: &str,
    row: &TemplateRow,
) -> ApiResult<Option<BuildRecord>> {
    let Some(build_id) = default_tag(row)
        .and_then(|tag| row.tags.iter().find(|(t, _)| *t == tag).cloned())
        .map(|(_, build)| build)
    else {
        return Ok(None);
    };
    Ok(state.runner.store().build(Some(owner), &build_id)?)
}

/// `owner`'s template by id, name or alias, with its default build, as the details view.
fn template_details(state: &AppState, owner: &str, template: &str) -> ApiResult<TemplateDetails> {
    let row = template_row(state, owner, template)?;
    let build = default_build(state, owner, &row)?;
    Ok(view::template(&row, None, build.as_ref()))
}

fn template_row(state: &AppState, owner: &str, template: &str) -> ApiResult<TemplateRow> {
    state
        .runner
        .store()
        .template(owner, template)?
        .ok_or_else(|| ApiError::template_not_found(template))
}

fn masked(details: &TemplateDetails, query: &QueryParams) -> ApiResult<Value> {
    view::mask(details, query.text("fields")).map_err(|m| ApiError::invalid("fields", m))
}

/// The caller's templates.
#[utoipa::path(
    get,
    path = "/v1/templates",
    tag = "templates",
    params(("fields" = Option<String>, Query, description = "comma-separated fields to keep")),
    responses((status = 200, body = TemplateList), (status = 400, body = ErrorEnvelope)),
)]
pub async fn list_templates(
    State(state): State<AppState>,
    Extension(Owner(owner)): Extension<Owner>,
    query: QueryParams,
) -> ApiResult<Json<TemplateList>> {
    state
        .blocking(move |state| {
            let mut templates = Vec::new();
            for row in state.runner.store().templates(&owner)? {
                let build = default_build(state, &owner, &row)?;
                templates.push(masked(&view::template(&row, None, build.as_ref()), &query)?);
            }
            Ok(Json(TemplateList { templates }))
        })
        .await
}

/// Template details by ref (`tmpl_...`, `name`, `name:tag`, `name:tb_...`, `owner/name:tag`).
#[utoipa::path(
    get,
    path = "/v1/templates/refs/{*ref}",
    tag = "templates",
    params(
        ("ref" = String, Path),
        ("fields" = Option<String>, Query, description = "comma-separated fields to keep"),
    ),
    responses((status = 200, body = TemplateDetails), (status = 404, body = ErrorEnvelope)),
)]
pub async fn get_ref(
    State(state): State<AppState>,
    Extension(Owner(owner)): Extension<Owner>,
    Path(reference): Path<String>,
    query: QueryParams,
) -> ApiResult<Json<Value>> {
    state
        .blocking(move |state| {
            let details = if reference.starts_with("tmpl_") {
                template_details(state, &owner, &reference)?
            } else {
                let resolved = resolve_ref(state.runner.store().as_ref(), &owner, &reference)?;
                view::template(
                    &resolved.template,
                    resolved.tag.as_deref(),
                    Some(&resolved.build),
                )
            };
            Ok(Json(masked(&details, &query)?))
        })
        .await
}

/// A template's builds, newest first.
#[utoipa::path(
    get,
    path = "/v1/templates/{template}/builds",
    tag = "templates",
    params(
        ("template" = String, Path),
        ("status" = Option<BuildStatus>, Query),
        ("backend" = Option<BuildBackend>, Query),
        ("limit" = Option<u64>, Query, description = "1-1000, default 100"),
        ("cursor" = Option<String>, Query, description = "next_cursor of the previous page"),
    ),
    responses((status = 200, body = HistoryPage), (status = 404, body = ErrorEnvelope)),
)]
pub async fn history(
    State(state): State<AppState>,
    Extension(Owner(owner)): Extension<Owner>,
    Path(template): Path<String>,
    query: QueryParams,
) -> ApiResult<Json<HistoryPage>> {
    query.only(&["status", "backend", "limit", "cursor"])?;
    let status = query.parsed::<BuildStatus>("status")?;
    let backend = query.parsed::<BuildBackend>("backend")?;
    let limit = query.u64("limit")?.unwrap_or(100).clamp(1, 1000) as usize;
    let before = query
        .u64("cursor")?
        .map(|c| i64::try_from(c).map_err(|_| ApiError::invalid("cursor", "is out of range")))
        .transpose()?;
    let rows = state
        .blocking(move |state| {
            let row = template_row(state, &owner, &template)?;
            Ok(state.runner.store().history(
                &owner,
                &row.id,
                &HistoryFilter {
                    status,
                    backend,
                    limit: limit + 1,
                    before,
                },
            )?)
        })
        .await?;
    let more = rows.len() > limit;
    let rows = &rows[..rows.len().min(limit)];
    Ok(Json(HistoryPage {
        builds: rows.iter().map(|(_, r)| view::history_row(r)).collect(),
        next_cursor: if more {
            rows.last().map(|(seq, _)| seq.to_string())
        } else {
            None
        },
    }))
}

/// A template's tags and the builds they point at.
#[utoipa::path(
    get,
    path = "/v1/templates/{template}/tags",
    tag = "templates",
    params(("template" = String, Path)),
    responses((status = 200, body = TagList), (status = 404, body = ErrorEnvelope)),
)]
pub async fn list_tags(
    State(state): State<AppState>,
    Extension(Owner(owner)): Extension<Owner>,
    Path(template): Path<String>,
) -> ApiResult<Json<TagList>> {
    let row = state
        .blocking(move |state| template_row(state, &owner, &template))
        .await?;
    Ok(Json(TagList {
        tags: row
            .tags
            .iter()
            .map(|(tag, build_id)| TagRef {
                tag: tag.clone(),
                build_id: build_id.clone(),
            })
            .collect(),
        default_tag: default_tag(&row),
    }))
}

/// Points a tag at a ready build of this template (like promote).
#[utoipa::path(
    post,
    path = "/v1/templates/{template}/tags",
    tag = "templates",
    params(("template" = String, Path)),
    request_body = AssignTagBody,
    responses(
        (status = 200, body = Promoted),
        (status = 404, body = ErrorEnvelope),
        (status = 409, body = ErrorEnvelope),
    ),
)]
pub async fn assign_tag(
    State(state): State<AppState>,
    Extension(Owner(owner)): Extension<Owner>,
    Path(template): Path<String>,
    JsonBody(body): JsonBody<AssignTagBody>,
) -> ApiResult<Json<Promoted>> {
    state
        .blocking(move |state| {
            let id = template_row(state, &owner, &template)?.id;
            let belongs = state
                .runner
                .store()
                .build(Some(&owner), &body.build_id)?
                .is_some_and(|b| b.template_id == id);
            if !belongs {
                return Err(ApiError::build_not_found(&body.build_id));
            }
            Ok(Json(promote(state, &owner, &body.build_id, &body.tag)?))
        })
        .await
}

/// Removes a tag: refs by it stop resolving; the build and its artifact stay.
#[utoipa::path(
    delete,
    path = "/v1/templates/{template}/tags/{tag}",
    tag = "templates",
    params(("template" = String, Path), ("tag" = String, Path)),
    responses((status = 200, body = TemplateDetails), (status = 404, body = ErrorEnvelope)),
)]
pub async fn remove_tag(
    State(state): State<AppState>,
    Extension(Owner(owner)): Extension<Owner>,
    Path((template, tag)): Path<(String, String)>,
) -> ApiResult<Json<TemplateDetails>> {
    state
        .blocking(move |state| {
            let id = template_row(state, &owner, &template)?.id;
            if !state.runner.store().remove_tag(&id, &tag)? {
                return Err(ApiError::new(
                    StatusCode::NOT_FOUND,
                    "template_resource_not_found",
                    format!("template {template:?} has no tag {tag:?}"),
                ));
            }
            Ok(Json(template_details(state, &owner, &id)?))
        })
        .await
}

fn checked_name(field: &str, name: &str) -> ApiResult<()> {
    nullspace_build::request::validate_name(name)
        .map_err(|e| ApiError::invalid(field, e.to_string().replace("invalid request: name: ", "")))
}

/// Renames a template; it keeps its id, builds, tags and aliases; refs by the old name stop
/// resolving.
#[utoipa::path(
    post,
    path = "/v1/templates/{template}/rename",
    tag = "templates",
    params(("template" = String, Path)),
    request_body = RenameBody,
    responses(
        (status = 200, body = TemplateDetails),
        (status = 404, body = ErrorEnvelope),
        (status = 409, body = ErrorEnvelope, description = "the name is taken"),
    ),
)]
pub async fn rename_template(
    State(state): State<AppState>,
    Extension(Owner(owner)): Extension<Owner>,
    Path(template): Path<String>,
    JsonBody(body): JsonBody<RenameBody>,
) -> ApiResult<Json<TemplateDetails>> {
    checked_name("name", &body.name)?;
    state
        .blocking(move |state| {
            let id = template_row(state, &owner, &template)?.id;
            state
                .runner
                .store()
                .rename_template(&owner, &id, &body.name)?;
            Ok(Json(template_details(state, &owner, &id)?))
        })
        .await
}

/// Adds an alias: refs may use it wherever they use the name.
#[utoipa::path(
    post,
    path = "/v1/templates/{template}/aliases",
    tag = "templates",
    params(("template" = String, Path)),
    request_body = AliasBody,
    responses(
        (status = 201, body = TemplateDetails),
        (status = 404, body = ErrorEnvelope),
        (status = 409, body = ErrorEnvelope, description = "the alias is taken"),
    ),
)]
pub async fn add_alias(
    State(state): State<AppState>,
    Extension(Owner(owner)): Extension<Owner>,
    Path(template): Path<String>,
    JsonBody(body): JsonBody<AliasBody>,
) -> ApiResult<(StatusCode, Json<TemplateDetails>)> {
    checked_name("alias", &body.alias)?;
    let details = state
        .blocking(move |state| {
            let id = template_row(state, &owner, &template)?.id;
            state.runner.store().add_alias(&owner, &id, &body.alias)?;
            template_details(state, &owner, &id)
        })
        .await?;
    Ok((StatusCode::CREATED, Json(details)))
}

/// Removes an alias.
#[utoipa::path(
    delete,
    path = "/v1/templates/{template}/aliases/{alias}",
    tag = "templates",
    params(("template" = String, Path), ("alias" = String, Path)),
    responses((status = 200, body = TemplateDetails), (status = 404, body = ErrorEnvelope)),
)]
pub async fn remove_alias(
    State(state): State<AppState>,
    Extension(Owner(owner)): Extension<Owner>,
    Path((template, alias)): Path<(String, String)>,
) -> ApiResult<Json<TemplateDetails>> {
    state
        .blocking(move |state| {
            let id = template_row(state, &owner, &template)?.id;
            if !state.runner.store().remove_alias(&owner, &id, &alias)? {
                return Err(ApiError::new(
                    StatusCode::NOT_FOUND,
                    "template_resource_not_found",
                    format!("template {template:?} has no alias {alias:?}"),
                ));
            }
            Ok(Json(template_details(state, &owner, &id)?))
        })
        .await
}
