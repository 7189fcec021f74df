//! EventBridge Scheduler's API, so that `boto3.client("scheduler")` and the AWS CLI manage a
//! tenant's schedules: CreateSchedule, GetSchedule, UpdateSchedule, DeleteSchedule
//! (`/schedules/{Name}`) and ListSchedules (`GET /schedules`), in the `default` schedule group.
//! A schedule's target is one of the caller's functions; each firing is an asynchronous
//! invocation of it ([`crate::schedule_firer`]) whose retries follow the schedule's
//! `RetryPolicy`. Bad input is a `ValidationException` naming the field, and nothing is stored.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use ignition_schedule_expr::{time_zone, Expression, Timing};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::auth::Caller;
use crate::clock::now_ms;
use crate::{blocking, ApiError, AppState};

/// The account and region in schedule ARNs.
/// The ARN of `caller`'s schedule `name` (in the `default` group, the only one).
fn schedule_arn(caller: &Caller, name: &str) -> String {
    format!(
        "arn:aws:scheduler:local:{}:schedule/default/{name}",
        caller.account_id()
    )
}
/// The only schedule group.
const GROUP: &str = "default";
/// EventBridge Scheduler's defaults for a target's retry policy.
const DEFAULT_RETRIES: u32 = 185;
const DEFAULT_MAX_AGE_S: u32 = 86_400;
/// Largest `Target.Input` (EventBridge Scheduler's limit).
const MAX_INPUT: usize = 8192;
/// Schedules a tenant may have (EventBridge Scheduler's default quota is a million per
/// account; a node's store is smaller).
pub(crate) const MAX_SCHEDULES: usize = 1000;

/// A schedule as it is stored: what was asked, checked, and the function it invokes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Definition {
    pub(crate) expression: String,
    pub(crate) timezone: String,
    pub(crate) enabled: bool,
    pub(crate) start_ms: Option<i64>,
    pub(crate) end_ms: Option<i64>,
    pub(crate) description: Option<String>,
    /// `FlexibleTimeWindow`: `None` is `OFF`.
    pub(crate) window_minutes: Option<u32>,
    /// `Target.Arn` as given.
    pub(crate) target_arn: String,
    /// The stored target it names (`TENANT.NAME[:QUALIFIER]`).
    pub(crate) function: String,
    pub(crate) role_arn: String,
    pub(crate) input: Option<String>,
    pub(crate) max_retries: u32,
    pub(crate) max_age_s: u32,
    /// `ActionAfterCompletion: DELETE`.
    pub(crate) delete_after: bool,
    /// When it was made (a rate's anchor without a start date).
    pub(crate) created_ms: i64,
}

impl Definition {
    /// When it fires, from what was checked at creation.
    pub(crate) fn timing(&self) -> Result<Timing, ApiError> {
        Ok(Timing {
            expression: self
                .expression
                .parse()
                .map_err(|e| ApiError::validation(format!("ScheduleExpression: {e}")))?,
            zone: time_zone(&self.timezone)
                .map_err(|e| ApiError::validation(format!("ScheduleExpressionTimezone: {e}")))?,
            start_ms: self.start_ms,
            end_ms: self.end_ms,
            created_ms: self.created_ms,
        })
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct FlexibleTimeWindow {
    mode: Option<String>,
    maximum_window_in_minutes: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct RetryPolicy {
    maximum_event_age_in_seconds: Option<u32>,
    maximum_retry_attempts: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct Target {
    arn: Option<String>,
    role_arn: Option<String>,
    input: Option<String>,
    retry_policy: Option<RetryPolicy>,
}

/// The body of CreateSchedule and UpdateSchedule (fields not listed are ignored).
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct ScheduleBody {
    action_after_completion: Option<String>,
    description: Option<String>,
    end_date: Option<f64>,
    flexible_time_window: Option<FlexibleTimeWindow>,
    group_name: Option<String>,
    schedule_expression: Option<String>,
    schedule_expression_timezone: Option<String>,
    start_date: Option<f64>,
    state: Option<String>,
    target: Option<Target>,
}

/// `?groupName=` of Get and Delete.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct GroupQuery {
    #[serde(rename = "groupName")]
    group_name: Option<String>,
}

/// The query of ListSchedules.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct ListQuery {
    #[serde(rename = "ScheduleGroup")]
    group: Option<String>,
    #[serde(rename = "NamePrefix")]
    name_prefix: Option<String>,
    #[serde(rename = "State")]
    state: Option<String>,
    #[serde(rename = "MaxResults")]
    max_results: Option<usize>,
    #[serde(rename = "NextToken")]
    next_token: Option<String>,
}

fn check_group(group: Option<&str>) -> Result<(), ApiError> {
    match group {
        None | Some(GROUP) => Ok(()),
        Some(g) => Err(ApiError::validation(format!(
            "GroupName: {g:?}: only the default schedule group exists"
        ))),
    }
}

fn check_name(name: &str) -> Result<(), ApiError> {
    let ok = (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(ApiError::validation(format!(
            "Name: {name:?} must be 1-64 of letters, digits, '-', '_' and '.'"
        )))
    }
}

fn not_found(name: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "ResourceNotFoundException",
        format!("Schedule {name} does not exist."),
    )
}

fn millis(field: &str, seconds: Option<f64>) -> Result<Option<i64>, ApiError> {
    seconds
        .map(|s| {
            if s.is_finite() && (0.0..4_102_444_800.0).contains(&s) {
                #[allow(clippy::cast_possible_truncation)]
                Ok((s * 1000.0) as i64)
            } else {
                Err(ApiError::validation(format!(
                    "{field}: not a time between 1970 and 2100"
                )))
            }
        })
        .transpose()
}

/// Checks a request and makes the schedule's definition (`created_ms`: its anchor).
async fn definition(
    state: &AppState,
    caller: &Caller,
    body: ScheduleBody,
    created_ms: i64,
) -> Result<Definition, ApiError> {
    check_group(body.group_name.as_deref())?;
    let expression = body
        .schedule_expression
        .ok_or_else(|| ApiError::validation("ScheduleExpression is required"))?;
    expression
        .parse::<Expression>()
        .map_err(|e| ApiError::validation(format!("ScheduleExpression: {e}")))?;
    let timezone = body
        .schedule_expression_timezone
        .unwrap_or_else(|| "UTC".to_owned());
    time_zone(&timezone)
        .map_err(|e| ApiError::validation(format!("ScheduleExpressionTimezone: {e}")))?;
    let enabled = match body.state.as_deref() {
        None | Some("ENABLED") => true,
        Some("DISABLED") => false,
        Some(s) => {
            return Err(ApiError::validation(format!(
                "State: {s:?} is not ENABLED or DISABLED"
            )))
        }
    };
    let window = body
        .flexible_time_window
        .ok_or_else(|| ApiError::validation("FlexibleTimeWindow is required"))?;
    let window_minutes = match (window.mode.as_deref(), window.maximum_window_in_minutes) {
        (Some("OFF"), None) => None,
        (Some("FLEXIBLE"), Some(m)) if (1..=1440).contains(&m) => Some(m),
        (Some("FLEXIBLE"), _) => {
            return Err(ApiError::validation(
                "FlexibleTimeWindow.MaximumWindowInMinutes: 1 to 1440 with Mode FLEXIBLE",
            ))
        }
        (Some("OFF"), Some(_)) => {
            return Err(ApiError::validation(
                "FlexibleTimeWindow.MaximumWindowInMinutes is only for Mode FLEXIBLE",
            ))
        }
        (m, _) => {
            return Err(ApiError::validation(format!(
                "FlexibleTimeWindow.Mode: {m:?} is not OFF or FLEXIBLE"
            )))
        }
    };
    let delete_after = match body.action_after_completion.as_deref() {
        None | Some("NONE") => false,
        Some("DELETE") => true,
        Some(a) => {
            return Err(ApiError::validation(format!(
                "ActionAfterCompletion: {a:?} is not NONE or DELETE"
            )))
        }
    };
    if body.description.as_ref().is_some_and(|d| d.len() > 512) {
        return Err(ApiError::validation("Description: at most 512 characters"));
    }
    let start_ms = millis("StartDate", body.start_date)?;
    let end_ms = millis("EndDate", body.end_date)?;
    if let (Some(s), Some(e)) = (start_ms, end_ms) {
        if e <= s {
            return Err(ApiError::validation("EndDate: must be after StartDate"));
        }
    }
    let target = body
        .target
        .ok_or_else(|| ApiError::validation("Target is required"))?;
    let target_arn = target
        .arn
        .ok_or_else(|| ApiError::validation("Target.Arn is required"))?;
    let role_arn = target
        .role_arn
        .ok_or_else(|| ApiError::validation("Target.RoleArn is required"))?;
    let function = target_function(state, caller, &target_arn).await?;
    if let Some(input) = &target.input {
        if input.len() > MAX_INPUT {
            return Err(ApiError::validation(format!(
                "Target.Input: at most {MAX_INPUT} characters"
            )));
        }
        if serde_json::from_str::<serde::de::IgnoredAny>(input).is_err() {
            return Err(ApiError::validation(
                "Target.Input: a Lambda function's event must be a JSON document",
            ));
        }
    }
    let retry = target.retry_policy.unwrap_or_default();
    let max_retries = retry.maximum_retry_attempts.unwrap_or(DEFAULT_RETRIES);
    if max_retries > 185 {
        return Err(ApiError::validation(
            "Target.RetryPolicy.MaximumRetryAttempts: 0 to 185",
        ));
    }
    let max_age_s = retry
        .maximum_event_age_in_seconds
        .unwrap_or(DEFAULT_MAX_AGE_S);
    if !(60..=86_400).contains(&max_age_s) {
        return Err(ApiError::validation(
            "Target.RetryPolicy.MaximumEventAgeInSeconds: 60 to 86400",
        ));
    }
    Ok(Definition {
        expression,
        timezone,
        enabled,
        start_ms,
        end_ms,
        description: body.description,
        window_minutes,
        target_arn,
        function,
        role_arn,
        input: target.input,
        max_retries,
        max_age_s,
        delete_after,
        created_ms,
    })
}

/// The stored target of `Target.Arn`: a Lambda function ARN (a qualifier allowed) naming one of
/// the caller's functions, which must exist.
async fn target_function(state: &AppState, caller: &Caller, arn: &str) -> Result<String, ApiError> {
    let parts: Vec<&str> = arn.split(':').collect();
    if !(parts.len() == 7 || parts.len() == 8)
        || parts[0] != "arn"
        || parts[2] != "lambda"
        || parts[5] != "function"
    {
        return Err(ApiError::validation(format!(
            "Target.Arn: {arn:?} is not a Lambda function ARN (arn:aws:lambda:REGION:ACCOUNT:function:NAME[:QUALIFIER])"
        )));
    }
    let stored = caller
        .function(arn)
        .map_err(|e| ApiError::validation(format!("Target.Arn: {}", e.message)))?;
    let target = match crate::lambda::qualifier(arn) {
        Some(q) => format!("{stored}:{q}"),
        None => stored,
    };
    crate::invoke::resolve(state, &target).await.map_err(|_| {
        ApiError::validation(format!("Target.Arn: {arn}: no such function of yours"))
    })?;
    Ok(target)
}

/// When a definition fires first after `after_ms`; a schedule that is enabled but can never
/// fire (an `at()` in the past, a window that holds no firing) is refused.
fn first_fire(def: &Definition, after_ms: i64) -> Result<Option<i64>, ApiError> {
    if !def.enabled {
        return Ok(None);
    }
    match def.timing()?.next_after(after_ms) {
        Some(t) => Ok(Some(t)),
        None if def.expression.starts_with("at(") => Err(ApiError::validation(format!(
            "ScheduleExpression: {} is in the past",
            def.expression
        ))),
        None => Err(ApiError::validation(format!(
            "ScheduleExpression: {} never fires between the schedule's start and end",
            def.expression
        ))),
    }
}

fn body_of(
    b: Result<Json<ScheduleBody>, axum::extract::rejection::JsonRejection>,
) -> Result<ScheduleBody, ApiError> {
    b.map(|Json(t)| t)
        .map_err(|e| ApiError::validation(format!("bad request body: {}", e.body_text())))
}

fn encode(def: &Definition) -> Result<String, ApiError> {
    serde_json::to_string(def).map_err(|e| ApiError::internal(format!("encode a schedule: {e}")))
}

pub(crate) fn decode(text: &str) -> Result<Definition, ApiError> {
    serde_json::from_str(text)
        .map_err(|e| ApiError::internal(format!("a stored schedule does not decode: {e}")))
}

/// `POST /schedules/{Name}` (CreateSchedule).
pub(crate) async fn create(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
    body: Result<Json<ScheduleBody>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    check_name(&name)?;
    let now = now_ms();
    let def = definition(&state, &caller, body_of(body)?, now).await?;
    let next = first_fire(&def, now)?;
    let text = encode(&def)?;
    let tenant = caller.tenant.clone();
    if blocking(&state, move |s| s.schedules(&tenant)).await?.len() >= MAX_SCHEDULES {
        return Err(ApiError::new(
            StatusCode::PAYMENT_REQUIRED,
            "ServiceQuotaExceededException",
            format!("the account has its quota of {MAX_SCHEDULES} schedules"),
        ));
    }
    let (tenant, n) = (caller.tenant.clone(), name.clone());
    let created = blocking(&state, move |s| s.create_schedule(&tenant, &n, &text, next)).await?;
    if !created {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "ConflictException",
            format!("Schedule {name} already exists."),
        ));
    }
    Ok(Json(json!({ "ScheduleArn": schedule_arn(&caller, &name) })))
}

/// `PUT /schedules/{Name}` (UpdateSchedule): replaces the whole definition, as AWS's does.
pub(crate) async fn update(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
    body: Result<Json<ScheduleBody>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    check_name(&name)?;
    let (tenant, n) = (caller.tenant.clone(), name.clone());
    let old = blocking(&state, move |s| s.schedule(&tenant, &n))
        .await?
        .ok_or_else(|| not_found(&name))?;
    let anchor = decode(&old.definition)?.created_ms;
    let def = definition(&state, &caller, body_of(body)?, anchor).await?;
    let next = first_fire(&def, now_ms())?;
    let text = encode(&def)?;
    let (tenant, n) = (caller.tenant.clone(), name.clone());
    if !blocking(&state, move |s| {
        s.replace_schedule(&tenant, &n, &text, next)
    })
    .await?
    {
        return Err(not_found(&name));
    }
    Ok(Json(json!({ "ScheduleArn": schedule_arn(&caller, &name) })))
}

fn seconds(ms: i64) -> f64 {
    #[allow(clippy::cast_precision_loss)]
    let s = ms as f64 / 1000.0;
    s
}

/// A schedule in GetSchedule's shape, plus what Ignition knows of its firings
/// (`IgnitionNextFire`, `IgnitionFired`, `IgnitionMissed`; SDKs ignore fields they do not know).
fn schedule_json(caller: &Caller, r: &ignition_store::ScheduleRecord, def: &Definition) -> Value {
    let mut window =
        json!({ "Mode": if def.window_minutes.is_some() { "FLEXIBLE" } else { "OFF" } });
    if let Some(m) = def.window_minutes {
        window["MaximumWindowInMinutes"] = m.into();
    }
    let mut target = json!({
        "Arn": def.target_arn,
        "RoleArn": def.role_arn,
        "RetryPolicy": {
            "MaximumRetryAttempts": def.max_retries,
            "MaximumEventAgeInSeconds": def.max_age_s,
        },
    });
    if let Some(i) = &def.input {
        target["Input"] = i.as_str().into();
    }
    let mut v = json!({
        "Arn": schedule_arn(caller, &r.name),
        "Name": r.name,
        "GroupName": GROUP,
        "ScheduleExpression": def.expression,
        "ScheduleExpressionTimezone": def.timezone,
        "State": if def.enabled { "ENABLED" } else { "DISABLED" },
        "FlexibleTimeWindow": window,
        "Target": target,
        "ActionAfterCompletion": if def.delete_after { "DELETE" } else { "NONE" },
        "CreationDate": r.created_at,
        "LastModificationDate": r.updated_at,
        "IgnitionFired": r.fired,
        "IgnitionMissed": r.missed,
    });
    if let Some(d) = &def.description {
        v["Description"] = d.as_str().into();
    }
    if let Some(s) = def.start_ms {
        v["StartDate"] = seconds(s).into();
    }
    if let Some(e) = def.end_ms {
        v["EndDate"] = seconds(e).into();
    }
    if let Some(n) = r.next_fire_ms {
        v["IgnitionNextFire"] = seconds(n).into();
    }
    v
}

/// `GET /schedules/{Name}` (GetSchedule).
pub(crate) async fn get(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
    Query(q): Query<GroupQuery>,
) -> Result<Json<Value>, ApiError> {
    check_group(q.group_name.as_deref())?;
    let (tenant, n) = (caller.tenant.clone(), name.clone());
    let r = blocking(&state, move |s| s.schedule(&tenant, &n))
        .await?
        .ok_or_else(|| not_found(&name))?;
    let def = decode(&r.definition)?;
    Ok(Json(schedule_json(&caller, &r, &def)))
}

/// `DELETE /schedules/{Name}` (DeleteSchedule).
pub(crate) async fn delete(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
    Query(q): Query<GroupQuery>,
) -> Result<Json<Value>, ApiError> {
    check_group(q.group_name.as_deref())?;
    let (tenant, n) = (caller.tenant.clone(), name.clone());
    if blocking(&state, move |s| s.delete_schedule(&tenant, &n)).await? {
        Ok(Json(json!({})))
    } else {
        Err(not_found(&name))
    }
}

/// `GET /schedules` (ListSchedules), paginated with `MaxResults` (1-100) and `NextToken`.
pub(crate) async fn list(
    State(state): State<AppState>,
    caller: Caller,
    Query(q): Query<ListQuery>,
) -> Result<Json<Value>, ApiError> {
    check_group(q.group.as_deref())?;
    let max = q.max_results.unwrap_or(100);
    if !(1..=100).contains(&max) {
        return Err(ApiError::validation("MaxResults: 1 to 100"));
    }
    let start: usize = match &q.next_token {
        None => 0,
        Some(t) => t
            .parse()
            .map_err(|_| ApiError::validation("NextToken: not a token this API gave"))?,
    };
    let tenant = caller.tenant.clone();
    let all = blocking(&state, move |s| s.schedules(&tenant)).await?;
    let mut matching = Vec::new();
    for r in &all {
        let def = decode(&r.definition)?;
        let state_ok = match q.state.as_deref() {
            None => true,
            Some("ENABLED") => def.enabled,
            Some("DISABLED") => !def.enabled,
            Some(s) => {
                return Err(ApiError::validation(format!(
                    "State: {s:?} is not ENABLED or DISABLED"
                )))
            }
        };
        let prefix_ok = q
            .name_prefix
            .as_deref()
            .is_none_or(|p| r.name.starts_with(p));
        if state_ok && prefix_ok {
            let full = schedule_json(&caller, r, &def);
            matching.push(json!({
                "Arn": full["Arn"],
                "Name": full["Name"],
                "GroupName": GROUP,
                "State": full["State"],
                "CreationDate": full["CreationDate"],
                "LastModificationDate": full["LastModificationDate"],
                "Target": { "Arn": def.target_arn },
                "ScheduleExpression": def.expression,
                "IgnitionNextFire": full["IgnitionNextFire"],
            }));
        }
    }
    let page: Vec<Value> = matching.iter().skip(start).take(max).cloned().collect();
    let mut v = json!({ "Schedules": page });
    if start + max < matching.len() {
        v["NextToken"] = (start + max).to_string().into();
    }
    Ok(Json(v))
}
