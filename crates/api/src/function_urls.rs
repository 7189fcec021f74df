//! Lambda's function URL configuration API: CreateFunctionUrlConfig, GetFunctionUrlConfig,
//! UpdateFunctionUrlConfig, DeleteFunctionUrlConfig (`/2021-10-31/functions/{name}/url`) and
//! ListFunctionUrlConfigs (`/2021-10-31/functions/{name}/urls`), and how a URL is addressed
//! ([`UrlSettings`]). Serving the URLs is [`crate::url_requests`]'s.

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use ignition_store::{Cors, FunctionUrl, UrlAuth};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::auth::Caller;
use crate::clock::iso8601;
use crate::lambda::function_arn;
use crate::{blocking, ApiError, AppState, QualifierQuery};

/// Where a node's function URLs live.
#[derive(Debug, Clone, Default)]
pub struct UrlSettings {
    /// `--url-domain`: URLs are `SCHEME://<url-id>.DOMAIN/`, routed by the Host header.
    /// Without it they are `SCHEME://NODE/lambda-url/<url-id>/` on whichever node was asked.
    pub domain: Option<String>,
    /// Whether the API serves TLS (`https` URLs).
    pub https: bool,
}

/// Checks `--url-domain`: a host name (`fn.example.com`), optionally with a port.
pub fn validate_url_domain(domain: &str) -> Result<(), String> {
    let (host, port) = match domain.rsplit_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (domain, None),
    };
    let label_ok = |l: &str| {
        (1..=63).contains(&l.len())
            && l.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    let host_ok = host.len() <= 200 && host.split('.').all(label_ok);
    let port_ok = port.is_none_or(|p| p.parse::<u16>().is_ok_and(|p| p > 0));
    if host_ok && port_ok {
        Ok(())
    } else {
        Err(format!(
            "--url-domain {domain:?} must be a lower-case host name (labels of [a-z0-9-]), optionally with :PORT"
        ))
    }
}

impl UrlSettings {
    fn scheme(&self) -> &'static str {
        if self.https {
            "https"
        } else {
            "http"
        }
    }

    /// The absolute URL of `url_id`, as a client that reached this node at `host` uses it.
    pub fn address(&self, host: &str, url_id: &str) -> String {
        match &self.domain {
            Some(domain) => format!("{}://{url_id}.{domain}/", self.scheme()),
            None => format!("{}://{host}/lambda-url/{url_id}/", self.scheme()),
        }
    }

    /// The URL id and the path under it (`rawPath`, starting with `/`) a request is for, if it
    /// is for a function URL: by path (`/lambda-url/<id>/...`), or with `--url-domain` by host.
    pub(crate) fn route<'a>(
        &self,
        host: Option<&'a str>,
        path: &'a str,
    ) -> Option<(&'a str, &'a str)> {
        if let Some(rest) = path.strip_prefix("/lambda-url/") {
            return Some(match rest.find('/') {
                Some(i) => (&rest[..i], &rest[i..]),
                None => (rest, "/"),
            });
        }
        let domain = self.domain.as_deref()?;
        let strip_port = |h: &'a str| h.rsplit_once(':').map_or(h, |(h, _)| h);
        let domain_host = domain.rsplit_once(':').map_or(domain, |(h, _)| h);
        let host = strip_port(host?);
        let id = host.strip_suffix(domain_host)?.strip_suffix('.')?;
        // Only a URL id's shape: other names under the domain (the API's own, say) pass on.
        ignition_store::is_url_id(id).then_some((id, path))
    }
}

/// The host a request reached this node at (`Host`, or HTTP/2's authority), if it is a
/// well-formed authority: it goes into URLs handed back to that client.
pub(crate) fn request_host<'a>(
    headers: &'a HeaderMap,
    uri: &'a axum::http::Uri,
) -> Option<&'a str> {
    let host = headers
        .get(axum::http::header::HOST)
        .and_then(|v| v.to_str().ok())
        .or_else(|| uri.authority().map(|a| a.as_str()))?;
    host.parse::<axum::http::uri::Authority>()
        .ok()
        .filter(|a| a.as_str() == host && !host.contains('@'))
        .map(|_| host)
}

/// The body of Create- and UpdateFunctionUrlConfig.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct UrlConfigBody {
    auth_type: Option<String>,
    cors: Option<Cors>,
    invoke_mode: Option<String>,
}

/// `?Marker=&MaxItems=` of ListFunctionUrlConfigs.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct ListQuery {
    #[serde(rename = "Marker")]
    marker: Option<String>,
    #[serde(rename = "MaxItems")]
    max_items: Option<usize>,
}

/// The function a request names, stored and as the caller names it, and the URL's qualifier
/// (`None`: `$LATEST`). A URL points at `$LATEST` or an alias, which must exist.
async fn target(
    state: &AppState,
    caller: &Caller,
    name_or_arn: &str,
    query: QualifierQuery,
) -> Result<(String, String, Option<String>), ApiError> {
    let stored = caller.function(name_or_arn)?;
    let user = crate::lambda::function_name(name_or_arn)?;
    let qualifier =
        crate::lambda::requested_qualifier(name_or_arn, query)?.filter(|q| q != "$LATEST");
    if let Some(q) = &qualifier {
        if q.bytes().all(|b| b.is_ascii_digit()) {
            return Err(ApiError::validation(format!(
                "Qualifier: {q:?} is a version; a function URL points at $LATEST or an alias"
            )));
        }
        ignition_store::validate_alias(q)
            .map_err(|e| ApiError::validation(format!("Qualifier: {e}")))?;
    }
    let (s, q) = (stored.clone(), qualifier.clone());
    let exists = blocking(state, move |store| {
        Ok(store.get_function(&s)?.is_some()
            && match &q {
                None => true,
                Some(alias) => store.get_alias(&s, alias)?.is_some(),
            })
    })
    .await?;
    if !exists {
        let what = match &qualifier {
            Some(q) => format!("{user}:{q}"),
            None => user.clone(),
        };
        return Err(ApiError::not_found(&what));
    }
    Ok((stored, user, qualifier))
}

fn auth_type(s: &str) -> Result<UrlAuth, ApiError> {
    UrlAuth::parse(s)
        .ok_or_else(|| ApiError::validation(format!("AuthType: {s:?} is not one of NONE, AWS_IAM")))
}

fn check_invoke_mode(mode: Option<&str>) -> Result<(), ApiError> {
    match mode {
        None | Some("BUFFERED") => Ok(()),
        Some("RESPONSE_STREAM") => Err(ApiError::validation(
            "InvokeMode: RESPONSE_STREAM is not supported yet; use BUFFERED",
        )),
        Some(other) => Err(ApiError::validation(format!(
            "InvokeMode: {other:?} is not one of BUFFERED, RESPONSE_STREAM"
        ))),
    }
}

/// Lambda's limits on a `Cors` (lengths and counts of each list, `MaxAge` up to a day).
fn check_cors(cors: &Cors) -> Result<(), ApiError> {
    let lists = [
        ("AllowHeaders", &cors.allow_headers, 100, 1024),
        ("AllowMethods", &cors.allow_methods, 6, 6),
        ("AllowOrigins", &cors.allow_origins, 100, 253),
        ("ExposeHeaders", &cors.expose_headers, 100, 1024),
    ];
    for (field, list, max_items, max_len) in lists {
        let Some(list) = list else { continue };
        if list.len() > max_items {
            return Err(ApiError::validation(format!(
                "Cors.{field}: {} items; at most {max_items}",
                list.len()
            )));
        }
        if let Some(bad) = list.iter().find(|v| {
            v.is_empty() || v.len() > max_len || v.bytes().any(|b| !(0x20..0x7f).contains(&b))
        }) {
            return Err(ApiError::validation(format!(
                "Cors.{field}: {bad:?} must be 1-{max_len} printable ASCII characters"
            )));
        }
    }
    if cors.max_age.is_some_and(|a| a > 86_400) {
        return Err(ApiError::validation("Cors.MaxAge: at most 86400 seconds"));
    }
    Ok(())
}

/// A `FunctionUrlConfig` as Lambda answers it.
fn url_json(state: &AppState, host: &str, account: &str, user: &str, url: &FunctionUrl) -> Value {
    let arn = match &url.qualifier {
        Some(q) => function_arn(account, &format!("{user}:{q}")),
        None => function_arn(account, user),
    };
    let mut v = json!({
        "FunctionUrl": state.urls.address(host, &url.url_id),
        "FunctionArn": arn,
        "AuthType": url.auth.as_str(),
        "CreationTime": iso8601(url.created_at),
        "LastModifiedTime": iso8601(url.updated_at),
        "InvokeMode": "BUFFERED",
    });
    if let Some(cors) = &url.cors {
        v["Cors"] = serde_json::to_value(cors).unwrap_or_default();
    }
    v
}

fn host_of<'a>(headers: &'a HeaderMap, uri: &'a axum::http::Uri) -> &'a str {
    request_host(headers, uri).unwrap_or("localhost")
}

/// `POST /2021-10-31/functions/{name}/url` (CreateFunctionUrlConfig).
pub(crate) async fn create(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
    Query(query): Query<QualifierQuery>,
    headers: HeaderMap,
    uri: axum::http::Uri,
    req: Result<Json<UrlConfigBody>, axum::extract::rejection::JsonRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let req = crate::json_body(req)?;
    let auth = auth_type(
        req.auth_type
            .as_deref()
            .ok_or_else(|| ApiError::validation("AuthType is required"))?,
    )?;
    check_invoke_mode(req.invoke_mode.as_deref())?;
    if let Some(cors) = &req.cors {
        check_cors(cors)?;
    }
    let (stored, user, qualifier) = target(&state, &caller, &name, query).await?;
    let (q, st) = (qualifier.clone(), stored.clone());
    let url = blocking(&state, move |s| {
        s.create_function_url(&st, q.as_deref(), auth, req.cors.as_ref())
    })
    .await?
    .ok_or_else(|| {
        ApiError::new(
            StatusCode::CONFLICT,
            "ResourceConflictException",
            format!(
                "Failed to create function url config for [functionArn = {}{}]. Error message: FunctionUrlConfig exists for this Lambda function",
                function_arn(&caller.account_id(), &user),
                qualifier.map(|q| format!(":{q}")).unwrap_or_default()
            ),
        )
    })?;
    if auth == UrlAuth::None {
        crate::policies::add_public_url_statement(
            &state,
            &caller,
            &stored,
            &user,
            url.qualifier.as_deref(),
        )
        .await?;
    }
    let mut v = url_json(
        &state,
        host_of(&headers, &uri),
        &caller.account_id(),
        &user,
        &url,
    );
    if let Some(o) = v.as_object_mut() {
        o.remove("LastModifiedTime");
    }
    Ok((StatusCode::CREATED, Json(v)))
}

fn no_url() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "ResourceNotFoundException",
        "The resource you requested does not exist.",
    )
}

/// `GET /2021-10-31/functions/{name}/url` (GetFunctionUrlConfig).
pub(crate) async fn get(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
    Query(query): Query<QualifierQuery>,
    headers: HeaderMap,
    uri: axum::http::Uri,
) -> Result<Json<Value>, ApiError> {
    let (stored, user, qualifier) = target(&state, &caller, &name, query).await?;
    let url = blocking(&state, move |s| {
        s.function_url(&stored, qualifier.as_deref())
    })
    .await?
    .ok_or_else(no_url)?;
    Ok(Json(url_json(
        &state,
        host_of(&headers, &uri),
        &caller.account_id(),
        &user,
        &url,
    )))
}

/// `PUT /2021-10-31/functions/{name}/url` (UpdateFunctionUrlConfig).
pub(crate) async fn update(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
    Query(query): Query<QualifierQuery>,
    headers: HeaderMap,
    uri: axum::http::Uri,
    req: Result<Json<UrlConfigBody>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    let req = crate::json_body(req)?;
    let auth = req.auth_type.as_deref().map(auth_type).transpose()?;
    check_invoke_mode(req.invoke_mode.as_deref())?;
    if let Some(cors) = &req.cors {
        check_cors(cors)?;
    }
    let (stored, user, qualifier) = target(&state, &caller, &name, query).await?;
    let url = blocking(&state, move |s| {
        s.update_function_url(&stored, qualifier.as_deref(), auth, req.cors.as_ref())
    })
    .await?
    .ok_or_else(no_url)?;
    Ok(Json(url_json(
        &state,
        host_of(&headers, &uri),
        &caller.account_id(),
        &user,
        &url,
    )))
}

/// `DELETE /2021-10-31/functions/{name}/url` (DeleteFunctionUrlConfig).
pub(crate) async fn delete(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
    Query(query): Query<QualifierQuery>,
) -> Result<StatusCode, ApiError> {
    let (stored, _, qualifier) = target(&state, &caller, &name, query).await?;
    let deleted = blocking(&state, move |s| {
        s.delete_function_url(&stored, qualifier.as_deref())
    })
    .await?;
    if deleted {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(no_url())
    }
}

/// `GET /2021-10-31/functions/{name}/urls` (ListFunctionUrlConfigs), paginated with `Marker`
/// and `MaxItems` (1-50).
pub(crate) async fn list(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
    Query(query): Query<ListQuery>,
    headers: HeaderMap,
    uri: axum::http::Uri,
) -> Result<Json<Value>, ApiError> {
    let max = query.max_items.unwrap_or(50);
    if !(1..=50).contains(&max) {
        return Err(ApiError::validation("MaxItems: 1 to 50"));
    }
    let start: usize = match &query.marker {
        None => 0,
        Some(m) => m.parse().map_err(|_| {
            ApiError::invalid(format!("Marker: {m:?} is not a marker this API gave"))
        })?,
    };
    let (stored, user, _) = target(&state, &caller, &name, QualifierQuery::default()).await?;
    let urls = blocking(&state, move |s| s.function_urls(&stored)).await?;
    let host = host_of(&headers, &uri);
    let page: Vec<Value> = urls
        .iter()
        .skip(start)
        .take(max)
        .map(|u| url_json(&state, host, &caller.account_id(), &user, u))
        .collect();
    let mut v = json!({ "FunctionUrlConfigs": page });
    if start + max < urls.len() {
        v["NextMarker"] = (start + max).to_string().into();
    }
    Ok(Json(v))
}

/// The `$LATEST` URL of each of `stored` functions, for listings (`ignition fn ls`).
pub(crate) async fn latest_addresses(
    state: &AppState,
    host: &str,
    stored: Vec<String>,
) -> Result<Vec<Option<String>>, ApiError> {
    let urls = blocking(state, move |s| {
        stored
            .iter()
            .map(|f| s.function_url(f, None))
            .collect::<Result<Vec<_>, _>>()
    })
    .await?;
    Ok(urls
        .into_iter()
        .map(|u| u.map(|u| state.urls.address(host, &u.url_id)))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "abcdefghijklmnopqrstuvwxyz012345";

    #[test]
    fn urls_are_routed_by_path_and_by_domain() {
        let plain = UrlSettings::default();
        assert_eq!(
            plain.route(Some("node:9000"), &format!("/lambda-url/{ID}/a/b")),
            Some((ID, "/a/b"))
        );
        assert_eq!(
            plain.route(None, &format!("/lambda-url/{ID}")),
            Some((ID, "/"))
        );
        assert_eq!(plain.route(Some(&format!("{ID}.fn.example")), "/x"), None);
        assert_eq!(
            plain.address("node:9000", ID),
            format!("http://node:9000/lambda-url/{ID}/")
        );

        let domain = UrlSettings {
            domain: Some("fn.example:9000".into()),
            https: true,
        };
        let host = format!("{ID}.fn.example:9000");
        assert_eq!(domain.route(Some(&host), "/a?b"), Some((ID, "/a?b")));
        assert_eq!(
            domain.route(Some(&format!("{ID}.fn.example")), "/"),
            Some((ID, "/"))
        );
        assert_eq!(domain.route(Some("api.fn.example"), "/"), None);
        assert_eq!(
            domain.route(Some(&format!("{ID}.other.example")), "/"),
            None
        );
        assert_eq!(domain.route(Some(&format!("x.{ID}.fn.example")), "/"), None);
        assert_eq!(
            domain.address("ignored", ID),
            format!("https://{ID}.fn.example:9000/")
        );
    }

    #[test]
    fn url_domains_are_host_names() {
        assert!(validate_url_domain("fn.example.com").is_ok());
        assert!(validate_url_domain("localhost:9000").is_ok());
        assert!(validate_url_domain("Fn.Example").is_err());
        assert!(validate_url_domain("fn.example/x").is_err());
        assert!(validate_url_domain("fn..example").is_err());
        assert!(validate_url_domain("fn.example:0").is_err());
        assert!(validate_url_domain("").is_err());
    }

    #[test]
    fn cors_limits() {
        assert!(check_cors(&Cors::default()).is_ok());
        let too_old = Cors {
            max_age: Some(86_401),
            ..Cors::default()
        };
        assert!(check_cors(&too_old).is_err());
        let bad_origin = Cors {
            allow_origins: Some(vec!["https://a\r\nx: y".into()]),
            ..Cors::default()
        };
        assert!(check_cors(&bad_origin).is_err());
        assert!(check_invoke_mode(Some("RESPONSE_STREAM")).is_err());
        assert!(check_invoke_mode(Some("BUFFERED")).is_ok());
    }
}
