//! Resource policies, as Lambda's: `AddPermission` (`POST .../functions/{name}/policy`),
//! `RemovePermission` (`DELETE .../policy/{sid}`), `GetPolicy`, each with `?Qualifier=`; and
//! what they are for here: a statement naming another tenant's account (or `*`) as its
//! principal, for `lambda:InvokeFunction` (or `lambda:*`), lets that tenant invoke the function
//! by its ARN. Nothing else crosses tenants: every other request naming another account's
//! function is refused before it reaches a handler ([`crate::auth`]).

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use ignition_types::FunctionId;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::auth::Caller;
use crate::lambda::{account_of, function_arn, function_name, qualifier};
use crate::{blocking, json_body, ApiError, AppState, QualifierQuery};

/// The actions a statement may grant (what Lambda's AddPermission takes that means something
/// here, and the wildcard).
const ACTIONS: &[&str] = &[
    "lambda:InvokeFunction",
    "lambda:InvokeFunctionUrl",
    "lambda:GetFunction",
    "lambda:*",
];

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct AddPermission {
    statement_id: String,
    action: String,
    principal: String,
    #[serde(default)]
    source_arn: Option<String>,
    #[serde(default)]
    source_account: Option<String>,
    #[serde(default)]
    function_url_auth_type: Option<String>,
    #[serde(default)]
    revision_id: Option<String>,
    #[serde(default)]
    principal_org_id: Option<String>,
    #[serde(default)]
    event_source_token: Option<String>,
}

fn validate_sid(sid: &str) -> Result<(), ApiError> {
    let ok = (1..=100).contains(&sid.len())
        && sid
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(ApiError::invalid(format!(
            "StatementId: {sid:?} must be 1-100 of letters, digits, '-' and '_'"
        )))
    }
}

/// The principal as a policy writes it: an account (bare or as its root ARN) becomes
/// `{"AWS": "arn:aws:iam::ACCOUNT:root"}`, `*` stays, a service is `{"Service": ...}`.
fn principal(p: &str) -> Result<Value, ApiError> {
    let account = p
        .strip_prefix("arn:aws:iam::")
        .and_then(|r| r.strip_suffix(":root"))
        .unwrap_or(p);
    if p == "*" {
        Ok(json!("*"))
    } else if ignition_types::is_account_id(account) {
        Ok(json!({ "AWS": format!("arn:aws:iam::{account}:root") }))
    } else if p.ends_with(".amazonaws.com") && !p.contains(['/', ':', ' ']) {
        Ok(json!({ "Service": p }))
    } else {
        Err(ApiError::invalid(format!(
            "Principal: {p:?} is not an account id, an account's root ARN, a service principal or *"
        )))
    }
}

/// Whether `statement` allows one of `actions` to `account` (named by its id or root ARN, or
/// `*`).
fn allows(statement: &Value, actions: &[&str], account: &str) -> bool {
    let action_ok = match &statement["Action"] {
        Value::String(a) => actions.contains(&a.as_str()),
        Value::Array(a) => a
            .iter()
            .any(|a| a.as_str().is_some_and(|a| actions.contains(&a))),
        _ => false,
    };
    let root = format!("arn:aws:iam::{account}:root");
    let principal_ok = match &statement["Principal"] {
        Value::String(p) => p == "*",
        p => p["AWS"] == "*" || p["AWS"] == root.as_str() || p["AWS"] == account,
    };
    statement["Effect"] == "Allow" && action_ok && principal_ok
}

/// Whether `statement` lets `account` invoke. A statement with a condition grants nothing: no
/// condition Lambda writes for an invoke can be checked here.
fn grants_invoke(statement: &Value, account: &str) -> bool {
    allows(statement, &["lambda:InvokeFunction", "lambda:*"], account)
        && statement.get("Condition").is_none()
}

/// Whether `statement` lets `account` call the function's URL of `auth_type` (`NONE` or
/// `AWS_IAM`): no condition but the one on the URL's auth type Lambda writes (which must then
/// be this URL's).
fn grants_url(statement: &Value, account: &str, auth_type: &str) -> bool {
    let condition_ok = match statement.get("Condition") {
        None => true,
        Some(c) => *c == json!({ "StringEquals": { "lambda:FunctionUrlAuthType": auth_type } }),
    };
    allows(
        statement,
        &["lambda:InvokeFunctionUrl", "lambda:*"],
        account,
    ) && condition_ok
}

/// Whether the policy of `stored` at `qualifier` lets `account` call its URL of `auth_type`.
pub(crate) async fn allows_url(
    state: &AppState,
    stored: &str,
    qualifier: &str,
    account: &str,
    auth_type: &str,
) -> Result<bool, ApiError> {
    let (s, q) = (stored.to_owned(), qualifier.to_owned());
    let statements = blocking(state, move |st| st.policy(&s, &q)).await?;
    Ok(statements
        .iter()
        .filter_map(|s| serde_json::from_str::<Value>(s).ok())
        .any(|s| grants_url(&s, account, auth_type)))
}

/// The statement Lambda's console adds with a URL of `AuthType: NONE`: anyone may call it.
pub(crate) async fn add_public_url_statement(
    state: &AppState,
    caller: &Caller,
    stored: &str,
    user: &str,
    qualifier: Option<&str>,
) -> Result<(), ApiError> {
    let resource = match qualifier {
        Some(q) => function_arn(&caller.account_id(), &format!("{user}:{q}")),
        None => function_arn(&caller.account_id(), user),
    };
    let statement = json!({
        "Sid": "FunctionURLAllowPublicAccess",
        "Effect": "Allow",
        "Principal": "*",
        "Action": "lambda:InvokeFunctionUrl",
        "Resource": resource,
        "Condition": { "StringEquals": { "lambda:FunctionUrlAuthType": "NONE" } },
    })
    .to_string();
    let (s, q) = (stored.to_owned(), qualifier.unwrap_or_default().to_owned());
    // Already there (a URL made before, deleted, made again): kept as it is.
    blocking(state, move |st| {
        st.add_permission(&s, &q, "FunctionURLAllowPublicAccess", &statement)
    })
    .await?;
    Ok(())
}

/// The stored function and the qualifier a policy request names.
fn target(
    caller: &Caller,
    name: &str,
    q: &QualifierQuery,
) -> Result<(String, String, String), ApiError> {
    let user = function_name(name)?;
    let stored = caller.function(name)?;
    let qualifier = qualifier(name)
        .or_else(|| q.qualifier.clone())
        .unwrap_or_default();
    Ok((stored, user, qualifier))
}

/// The function (or version or alias) must exist for its policy to be read or changed.
async fn must_exist(state: &AppState, stored: &str, user: &str, q: &str) -> Result<(), ApiError> {
    let t = if q.is_empty() {
        stored.to_owned()
    } else {
        format!("{stored}:{q}")
    };
    crate::invoke::resolve(state, &t)
        .await
        .map(|_| ())
        .map_err(|_| {
            ApiError::not_found(&if q.is_empty() {
                user.to_owned()
            } else {
                format!("{user}:{q}")
            })
        })
}

/// `POST /2015-03-31/functions/{name}/policy` (AddPermission).
pub(crate) async fn add(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
    Query(q): Query<QualifierQuery>,
    body: Result<Json<AddPermission>, axum::extract::rejection::JsonRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let req = json_body(body)?;
    let (stored, user, qualifier) = target(&caller, &name, &q)?;
    must_exist(&state, &stored, &user, &qualifier).await?;
    validate_sid(&req.statement_id)?;
    if !ACTIONS.contains(&req.action.as_str()) {
        return Err(ApiError::invalid(format!(
            "Action: {:?} is not one of {}",
            req.action,
            ACTIONS.join(", ")
        )));
    }
    check_policy_revision(&state, &stored, &qualifier, req.revision_id.as_deref()).await?;
    let resource = if qualifier.is_empty() {
        function_arn(&caller.account_id(), &user)
    } else {
        function_arn(&caller.account_id(), &format!("{user}:{qualifier}"))
    };
    let mut statement = json!({
        "Sid": req.statement_id,
        "Effect": "Allow",
        "Principal": principal(&req.principal)?,
        "Action": req.action,
        "Resource": resource,
    });
    let mut condition = serde_json::Map::new();
    if let Some(arn) = &req.source_arn {
        condition.insert("ArnLike".into(), json!({ "AWS:SourceArn": arn }));
    }
    // Conditions this node cannot check are kept as written; a statement with any condition
    // grants nothing here (`grants_invoke`), which errs on the side of refusing.
    let mut equals = serde_json::Map::new();
    if let Some(account) = &req.source_account {
        equals.insert("AWS:SourceAccount".into(), json!(account));
    }
    if let Some(auth) = &req.function_url_auth_type {
        equals.insert("lambda:FunctionUrlAuthType".into(), json!(auth));
    }
    if let Some(org) = &req.principal_org_id {
        equals.insert("aws:PrincipalOrgID".into(), json!(org));
    }
    if let Some(token) = &req.event_source_token {
        equals.insert("lambda:EventSourceToken".into(), json!(token));
    }
    if !equals.is_empty() {
        condition.insert("StringEquals".into(), Value::Object(equals));
    }
    if !condition.is_empty() {
        statement["Condition"] = Value::Object(condition);
    }
    let text = statement.to_string();
    let (s, q, sid, t) = (stored, qualifier, req.statement_id.clone(), text.clone());
    let added = blocking(&state, move |st| st.add_permission(&s, &q, &sid, &t)).await?;
    if added == ignition_store::Added::Exists {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "ResourceConflictException",
            format!(
                "The statement id ({}) provided already exists. Please provide a new statement id, or remove the existing statement.",
                req.statement_id
            ),
        ));
    }
    Ok((StatusCode::CREATED, Json(json!({ "Statement": text }))))
}

/// `?Qualifier=&RevisionId=` of RemovePermission.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct RemoveQuery {
    #[serde(rename = "Qualifier")]
    qualifier: Option<String>,
    #[serde(rename = "RevisionId")]
    revision_id: Option<String>,
}

/// `DELETE /2015-03-31/functions/{name}/policy/{sid}` (RemovePermission).
pub(crate) async fn remove(
    State(state): State<AppState>,
    caller: Caller,
    Path((name, sid)): Path<(String, String)>,
    Query(rq): Query<RemoveQuery>,
) -> Result<StatusCode, ApiError> {
    let q = QualifierQuery {
        qualifier: rq.qualifier,
    };
    let (stored, user, qualifier) = target(&caller, &name, &q)?;
    must_exist(&state, &stored, &user, &qualifier).await?;
    check_policy_revision(&state, &stored, &qualifier, rq.revision_id.as_deref()).await?;
    let s = sid.clone();
    if blocking(&state, move |st| {
        st.remove_permission(&stored, &qualifier, &s)
    })
    .await?
    {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "ResourceNotFoundException",
            format!("Statement {sid} is not found in resource policy."),
        ))
    }
}

/// `GET /2015-03-31/functions/{name}/policy` (GetPolicy).
pub(crate) async fn get(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
    Query(q): Query<QualifierQuery>,
) -> Result<Json<Value>, ApiError> {
    let (stored, user, qualifier) = target(&caller, &name, &q)?;
    must_exist(&state, &stored, &user, &qualifier).await?;
    let statements = blocking(&state, move |st| st.policy(&stored, &qualifier)).await?;
    if statements.is_empty() {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "ResourceNotFoundException",
            "The resource you requested does not exist.",
        ));
    }
    let revision = policy_revision(&statements);
    let statements: Vec<Value> = statements
        .iter()
        .filter_map(|s| serde_json::from_str(s).ok())
        .collect();
    let policy = json!({ "Version": "2012-10-17", "Id": "default", "Statement": statements });
    Ok(Json(json!({
        "Policy": policy.to_string(),
        "RevisionId": revision,
    })))
}

/// A policy's revision id: a digest of its statements, in a UUID's shape as Lambda's.
fn policy_revision(statements: &[String]) -> String {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    for s in statements {
        h.update((s.len() as u64).to_le_bytes());
        h.update(s.as_bytes());
    }
    crate::lambda::revision_of_digest(&h.finalize())
}

/// A change sent with a `RevisionId` is made only on the policy it was read from.
async fn check_policy_revision(
    state: &AppState,
    stored: &str,
    qualifier: &str,
    sent: Option<&str>,
) -> Result<(), ApiError> {
    let Some(sent) = sent else { return Ok(()) };
    let (s, q) = (stored.to_owned(), qualifier.to_owned());
    let statements = blocking(state, move |st| st.policy(&s, &q)).await?;
    if sent == policy_revision(&statements) {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::PRECONDITION_FAILED,
            "PreconditionFailedException",
            "The revision ID provided does not match the latest revision ID. Call the GetPolicy API to retrieve the latest revision ID",
        ))
    }
}

/// The stored target an invocation of `name_or_arn` reaches for `caller`: its own function, or
/// another account's whose policy lets the caller's account invoke it (at the qualifier
/// invoked, as Lambda reads a qualified ARN's policy). `qualifier` is the one the request names.
pub(crate) async fn invoke_target(
    state: &AppState,
    caller: &Caller,
    name_or_arn: &str,
    qualifier: Option<&str>,
) -> Result<String, ApiError> {
    let with_q = |stored: String| match qualifier {
        Some(q) => format!("{stored}:{q}"),
        None => stored,
    };
    let own = caller.account_id();
    let Some(account) = account_of(name_or_arn).filter(|a| *a != own) else {
        return Ok(with_q(caller.function(name_or_arn)?));
    };
    let denied = || {
        ApiError::new(
            StatusCode::FORBIDDEN,
            "AccessDeniedException",
            format!(
                "User: arn:aws:iam::{own}:user/ignition is not authorized to perform: lambda:InvokeFunction on resource: {name_or_arn} because no resource-based policy allows the lambda:InvokeFunction action"
            ),
        )
    };
    let name = function_name(name_or_arn)?;
    let wanted = account.to_owned();
    let owner = blocking(state, move |st| {
        let tenants = st.list_keys()?;
        Ok(std::iter::once(ignition_types::DEFAULT_TENANT.to_owned())
            .chain(tenants.into_iter().map(|(k, _)| k.tenant))
            .find(|t| ignition_types::account_id(t) == wanted))
    })
    .await?
    .ok_or_else(denied)?;
    let stored = FunctionId::new(&owner, &name).stored();
    let (s, q) = (stored.clone(), qualifier.unwrap_or_default().to_owned());
    let statements = blocking(state, move |st| st.policy(&s, &q)).await?;
    let allowed = statements
        .iter()
        .filter_map(|s| serde_json::from_str::<Value>(s).ok())
        .any(|s| grants_invoke(&s, &own));
    if allowed {
        Ok(with_q(stored))
    } else {
        Err(denied())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn principals_take_lambdas_forms_and_statements_grant_only_what_they_say() {
        assert_eq!(
            principal("123456789012").unwrap(),
            json!({"AWS": "arn:aws:iam::123456789012:root"})
        );
        assert_eq!(
            principal("arn:aws:iam::123456789012:root").unwrap(),
            principal("123456789012").unwrap()
        );
        assert_eq!(principal("*").unwrap(), json!("*"));
        assert_eq!(
            principal("s3.amazonaws.com").unwrap(),
            json!({"Service": "s3.amazonaws.com"})
        );
        assert!(principal("alice").is_err() && principal("1234").is_err());
        let s = |p: Value, a: &str| json!({"Effect": "Allow", "Principal": p, "Action": a});
        let acct = principal("123456789012").unwrap();
        assert!(grants_invoke(
            &s(acct.clone(), "lambda:InvokeFunction"),
            "123456789012"
        ));
        assert!(grants_invoke(&s(acct.clone(), "lambda:*"), "123456789012"));
        assert!(!grants_invoke(
            &s(acct.clone(), "lambda:InvokeFunction"),
            "210987654321"
        ));
        assert!(!grants_invoke(
            &s(acct.clone(), "lambda:GetFunction"),
            "123456789012"
        ));
        assert!(grants_invoke(
            &s(json!("*"), "lambda:InvokeFunction"),
            "210987654321"
        ));
        assert!(!grants_invoke(
            &s(
                json!({"Service": "s3.amazonaws.com"}),
                "lambda:InvokeFunction"
            ),
            "123456789012"
        ));
        let mut conditioned = s(acct, "lambda:InvokeFunction");
        conditioned["Condition"] = json!({"ArnLike": {"AWS:SourceArn": "x"}});
        assert!(
            !grants_invoke(&conditioned, "123456789012"),
            "a condition this node cannot check grants nothing"
        );
        let url = |p: Value, auth: &str| {
            json!({"Effect": "Allow", "Principal": p, "Action": "lambda:InvokeFunctionUrl",
                "Condition": {"StringEquals": {"lambda:FunctionUrlAuthType": auth}}})
        };
        let bob = principal("123456789012").unwrap();
        assert!(grants_url(
            &url(bob.clone(), "AWS_IAM"),
            "123456789012",
            "AWS_IAM"
        ));
        assert!(!grants_url(
            &url(bob.clone(), "NONE"),
            "123456789012",
            "AWS_IAM"
        ));
        assert!(!grants_url(
            &url(bob.clone(), "AWS_IAM"),
            "210987654321",
            "AWS_IAM"
        ));
        assert!(
            !grants_invoke(&url(bob, "AWS_IAM"), "123456789012"),
            "a URL grant is not an invoke grant"
        );
    }
}
