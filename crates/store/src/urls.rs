//! Function URLs: a function (or one of its aliases) reachable by plain HTTP at an address of
//! its own. The store owns each URL's id (random, 32 of `[a-z0-9]`, as Lambda's), its
//! authentication type and its CORS configuration; the API builds the address from the id.
//! A function has at most one URL per qualifier; deleting the function or the alias deletes it.

use rand::distributions::{Alphanumeric, DistString};
use serde::{Deserialize, Serialize};

use crate::cache::url_scope;
use crate::sql::{vals, Row, Sql, Value};
use crate::store::{now, Store, StoreError};

/// Who may call a URL.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum UrlAuth {
    /// Anyone.
    #[serde(rename = "NONE")]
    None,
    /// Requests signed (SigV4) with a key of the function's tenant.
    #[serde(rename = "AWS_IAM")]
    AwsIam,
}

impl UrlAuth {
    /// Lambda's name for it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "NONE",
            Self::AwsIam => "AWS_IAM",
        }
    }

    /// Parses Lambda's name.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "NONE" => Some(Self::None),
            "AWS_IAM" => Some(Self::AwsIam),
            _ => None,
        }
    }
}

/// A URL's cross-origin settings, in Lambda's shape (`Cors` of CreateFunctionUrlConfig).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Cors {
    /// Whether browsers may send cookies and credentials.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_credentials: Option<bool>,
    /// Request headers a browser may send.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_headers: Option<Vec<String>>,
    /// Methods a browser may use (`*` for any).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_methods: Option<Vec<String>>,
    /// Origins that may call (`*` for any).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_origins: Option<Vec<String>>,
    /// Response headers a browser may read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expose_headers: Option<Vec<String>>,
    /// Seconds a browser may cache a preflight answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_age: Option<u32>,
}

/// One function URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FunctionUrl {
    /// The stored function (`TENANT.NAME`).
    pub function: String,
    /// The alias it invokes, or `None` for `$LATEST`.
    pub qualifier: Option<String>,
    /// The URL's id: the first label of its host name, or the path segment after `/lambda-url/`.
    pub url_id: String,
    /// Who may call it.
    pub auth: UrlAuth,
    /// Its cross-origin settings, if any.
    pub cors: Option<Cors>,
    /// Unix seconds.
    pub created_at: i64,
    /// Unix seconds.
    pub updated_at: i64,
}

/// Whether `s` could be a URL id (what the store hands out), checked before any lookup.
pub fn is_url_id(s: &str) -> bool {
    s.len() == 32
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
}

const COLUMNS: &str = "function, qualifier, url_id, auth, cors, created_at, updated_at";

fn url_from(r: &Row) -> Result<FunctionUrl, StoreError> {
    let function = r.text(0)?;
    let qualifier = r.text(1)?;
    let cors = match r.opt_text(4)?.map(|c| serde_json::from_str(&c)).transpose() {
        Ok(c) => c,
        Err(_) => return Err(StoreError::Corrupt(function)),
    };
    let Some(auth) = UrlAuth::parse(&r.text(3)?) else {
        return Err(StoreError::Corrupt(function));
    };
    Ok(FunctionUrl {
        function,
        qualifier: (!qualifier.is_empty()).then_some(qualifier),
        url_id: r.text(2)?,
        auth,
        cors,
        created_at: r.int(5)?,
        updated_at: r.int(6)?,
    })
}

fn cors_json(function: &str, cors: Option<&Cors>) -> Result<Option<String>, StoreError> {
    cors.map(serde_json::to_string)
        .transpose()
        .map_err(|_| StoreError::Corrupt(function.to_owned()))
}

impl Store {
    /// Gives `function` (at `qualifier`) a URL with a new id. `Ok(None)`: it has one already.
    pub fn create_function_url(
        &self,
        function: &str,
        qualifier: Option<&str>,
        auth: UrlAuth,
        cors: Option<&Cors>,
    ) -> Result<Option<FunctionUrl>, StoreError> {
        let url_id = Alphanumeric
            .sample_string(&mut rand::thread_rng(), 32)
            .to_ascii_lowercase();
        let t = now();
        let cors_text = cors_json(function, cors)?;
        let inserted = self.with(|db| {
            db.notify(&url_scope(&url_id))?;
            db.execute(
                "INSERT INTO function_urls (function, qualifier, url_id, auth, cors, created_at, updated_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $6) ON CONFLICT DO NOTHING",
                &vals![function, qualifier.unwrap_or(""), &url_id, auth.as_str(), cors_text, t],
            )
        })?;
        Ok((inserted == 1).then(|| FunctionUrl {
            function: function.to_owned(),
            qualifier: qualifier.map(str::to_owned),
            url_id,
            auth,
            cors: cors.cloned(),
            created_at: t,
            updated_at: t,
        }))
    }

    /// Changes what is given of a URL's settings; `Ok(None)` when there is no such URL.
    pub fn update_function_url(
        &self,
        function: &str,
        qualifier: Option<&str>,
        auth: Option<UrlAuth>,
        cors: Option<&Cors>,
    ) -> Result<Option<FunctionUrl>, StoreError> {
        let Some(mut url) = self.function_url(function, qualifier)? else {
            return Ok(None);
        };
        if let Some(auth) = auth {
            url.auth = auth;
        }
        if let Some(cors) = cors {
            url.cors = Some(cors.clone());
        }
        url.updated_at = now();
        let cors_text = cors_json(function, url.cors.as_ref())?;
        self.with(|db| {
            db.notify(&url_scope(&url.url_id))?;
            db.execute(
                "UPDATE function_urls SET auth = $3, cors = $4, updated_at = $5
                 WHERE function = $1 AND qualifier = $2",
                &vals![
                    function,
                    qualifier.unwrap_or(""),
                    url.auth.as_str(),
                    cors_text,
                    url.updated_at
                ],
            )
        })?;
        Ok(Some(url))
    }

    /// The URL of `function` at `qualifier`.
    pub fn function_url(
        &self,
        function: &str,
        qualifier: Option<&str>,
    ) -> Result<Option<FunctionUrl>, StoreError> {
        self.with(|db| {
            db.query_opt(
                &format!(
                    "SELECT {COLUMNS} FROM function_urls WHERE function = $1 AND qualifier = $2"
                ),
                &vals![function, qualifier.unwrap_or("")],
            )?
            .map(|r| url_from(&r))
            .transpose()
        })
    }

    /// The URL with id `url_id` (through the node's cache of a shared store: a URL request
    /// waits on PostgreSQL for nothing once the node has seen its URL).
    pub fn function_url_by_id(&self, url_id: &str) -> Result<Option<FunctionUrl>, StoreError> {
        self.cached(&url_scope(url_id), "url", |db| {
            db.query_opt(
                &format!("SELECT {COLUMNS} FROM function_urls WHERE url_id = $1"),
                &vals![url_id],
            )?
            .map(|r| url_from(&r))
            .transpose()
        })
    }

    /// Every URL of `function`, `$LATEST`'s first, then by qualifier.
    pub fn function_urls(&self, function: &str) -> Result<Vec<FunctionUrl>, StoreError> {
        self.with(|db| {
            db.query(
                &format!(
                    "SELECT {COLUMNS} FROM function_urls WHERE function = $1 ORDER BY qualifier"
                ),
                &vals![function],
            )?
            .iter()
            .map(url_from)
            .collect()
        })
    }

    /// Deletes the URL of `function` at `qualifier`; `false` if there was none.
    pub fn delete_function_url(
        &self,
        function: &str,
        qualifier: Option<&str>,
    ) -> Result<bool, StoreError> {
        self.transaction(|db| {
            let gone = delete_urls(
                db,
                "function = $1 AND qualifier = $2",
                &vals![function, qualifier.unwrap_or("")],
            )?;
            Ok(gone == 1)
        })
    }
}

/// Deletes the function URLs `condition` selects, telling every node's cache; how many.
pub(crate) fn delete_urls(
    db: &mut dyn Sql,
    condition: &str,
    params: &[Value],
) -> Result<usize, StoreError> {
    let gone = db.query(
        &format!("DELETE FROM function_urls WHERE {condition} RETURNING url_id"),
        params,
    )?;
    for r in &gone {
        db.notify(&url_scope(&r.text(0)?))?;
    }
    Ok(gone.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_function_has_one_url_per_qualifier_and_loses_them_with_itself() {
        for (_, s) in crate::testing::stores() {
            let latest = urls_on(&s);
            deleted_with_function(&s, &latest);
        }
    }

    fn urls_on(s: &Store) -> FunctionUrl {
        let cors = Cors {
            allow_origins: Some(vec!["https://example.com".into()]),
            max_age: Some(60),
            ..Cors::default()
        };
        let latest = s
            .create_function_url("t.f", None, UrlAuth::None, Some(&cors))
            .unwrap()
            .unwrap();
        assert!(is_url_id(&latest.url_id), "{}", latest.url_id);
        assert!(s
            .create_function_url("t.f", None, UrlAuth::AwsIam, None)
            .unwrap()
            .is_none());
        let live = s
            .create_function_url("t.f", Some("live"), UrlAuth::AwsIam, None)
            .unwrap()
            .unwrap();
        assert_ne!(live.url_id, latest.url_id);
        assert_eq!(
            s.function_url_by_id(&latest.url_id).unwrap().unwrap(),
            latest
        );
        assert_eq!(s.function_url("t.f", Some("live")).unwrap().unwrap(), live);
        let updated = s
            .update_function_url("t.f", None, Some(UrlAuth::AwsIam), None)
            .unwrap()
            .unwrap();
        assert_eq!(updated.auth, UrlAuth::AwsIam);
        assert_eq!(updated.cors, Some(cors), "what is not given is kept");
        assert_eq!(s.function_urls("t.f").unwrap().len(), 2);
        assert!(s.delete_function_url("t.f", Some("live")).unwrap());
        assert!(!s.delete_function_url("t.f", Some("live")).unwrap());
        s.function_url("t.f", None).unwrap().unwrap()
    }

    fn deleted_with_function(s: &Store, latest: &FunctionUrl) {
        s.put_function(
            &crate::FunctionConfig {
                name: "t.f".into(),
                runtime: crate::Runtime::Python3,
                runtime_name: String::new(),
                handler: "a.b".into(),
                memory_mib: 128,
                timeout_s: 3,
                env: Default::default(),
                reuse: false,
                egress: Vec::new(),
                description: String::new(),
                layers: Vec::new(),
                image: None,
            },
            b"x",
        )
        .unwrap();
        assert!(s.delete_function("t.f").unwrap());
        assert!(s.function_url_by_id(&latest.url_id).unwrap().is_none());
    }

    #[test]
    fn url_ids_are_checked_by_shape() {
        assert!(is_url_id("abcdefghijklmnopqrstuvwxyz012345"));
        assert!(!is_url_id("ABCDEFGHIJKLMNOPQRSTUVWXYZ012345"));
        assert!(!is_url_id("short"));
        assert!(!is_url_id("abcdefghijklmnopqrstuvwxyz01234/"));
    }
}
