//! The runtime user, resolved as Docker (runc) does against the image's `/etc/passwd` and
//! `/etc/group`: `name`, `uid`, `name:group`, `uid:gid` and the mixed forms. A name that is not
//! in the files is an error; a numeric uid that is not there runs with gid 0 and home `/`.
//! Supplementary groups are the groups that list the user's name.

/// Who a process runs as.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    /// User id.
    pub uid: u32,
    /// Primary group id.
    pub gid: u32,
    /// Supplementary group ids (the primary one included).
    pub groups: Vec<u32>,
    /// Home directory (`HOME` unless the env sets it).
    pub home: String,
}

/// Why a user spec does not resolve.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum UserError {
    /// A user name that `/etc/passwd` lacks.
    #[error("user {0:?}: no matching entry in /etc/passwd")]
    UnknownUser(String),
    /// A group name that `/etc/group` lacks.
    #[error("group {0:?}: no matching entry in /etc/group")]
    UnknownGroup(String),
    /// An empty part.
    #[error("user {0:?}: empty user or group")]
    Empty(String),
}

struct PasswdEntry<'a> {
    name: &'a str,
    uid: u32,
    gid: u32,
    home: &'a str,
}

fn passwd_entries(passwd: &str) -> impl Iterator<Item = PasswdEntry<'_>> {
    passwd.lines().filter_map(|line| {
        let fields: Vec<&str> = line.split(':').collect();
        if fields.len() < 7 || line.starts_with('#') {
            return None;
        }
        Some(PasswdEntry {
            name: fields[0],
            uid: fields[2].parse().ok()?,
            gid: fields[3].parse().ok()?,
            home: fields[5],
        })
    })
}

/// `(name, gid, members)` of every well-formed `/etc/group` line.
fn group_entries(group: &str) -> impl Iterator<Item = (&str, u32, Vec<&str>)> {
    group.lines().filter_map(|line| {
        let fields: Vec<&str> = line.split(':').collect();
        if fields.len() < 4 || line.starts_with('#') {
            return None;
        }
        let members = fields[3].split(',').filter(|m| !m.is_empty()).collect();
        Some((fields[0], fields[2].parse().ok()?, members))
    })
}

/// Resolves `spec` (`None`: root) against the contents of `/etc/passwd` and `/etc/group` (empty
/// when the image has none).
pub fn resolve(spec: Option<&str>, passwd: &str, group: &str) -> Result<Identity, UserError> {
    let spec = spec.map(str::trim).filter(|s| !s.is_empty()).unwrap_or("0");
    let (user_part, group_part) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    if user_part.is_empty() || group_part.is_some_and(str::is_empty) {
        return Err(UserError::Empty(spec.to_string()));
    }
    let entry = passwd_entries(passwd).find(|e| match user_part.parse::<u32>() {
        Ok(uid) => e.uid == uid,
        Err(_) => e.name == user_part,
    });
    let (uid, mut gid, home, name) = match (entry, user_part.parse::<u32>()) {
        (Some(e), _) => (e.uid, e.gid, e.home.to_string(), Some(e.name)),
        (None, Ok(uid)) => (uid, 0, "/".to_string(), None),
        (None, Err(_)) => return Err(UserError::UnknownUser(user_part.to_string())),
    };
    if let Some(g) = group_part {
        gid = match g.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => group_entries(group)
                .find(|(n, _, _)| *n == g)
                .map(|(_, gid, _)| gid)
                .ok_or_else(|| UserError::UnknownGroup(g.to_string()))?,
        };
    }
    let mut groups = vec![gid];
    // With an explicit group, Docker uses only that one; otherwise the user's memberships.
    if let (Some(name), None) = (name, group_part) {
        for (_, id, members) in group_entries(group) {
            if members.contains(&name) && !groups.contains(&id) {
                groups.push(id);
            }
        }
    }
    Ok(Identity {
        uid,
        gid,
        groups,
        home: if home.is_empty() { "/".into() } else { home },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/bash\n\
        app:x:1000:1000:App:/home/app:/bin/sh\n\
        broken line\n";
    const GROUP: &str = "root:x:0:\nstaff:x:50:app,other\napp:x:1000:\nwheel:x:10:\n";

    #[test]
    fn names_ids_and_pairs_resolve_like_docker() {
        let app = resolve(Some("app"), PASSWD, GROUP).unwrap();
        assert_eq!(
            (app.uid, app.gid, app.home.as_str()),
            (1000, 1000, "/home/app")
        );
        assert_eq!(app.groups, vec![1000, 50]);
        assert_eq!(resolve(Some("1000"), PASSWD, GROUP).unwrap(), app);
        let pair = resolve(Some("app:wheel"), PASSWD, GROUP).unwrap();
        assert_eq!(
            (pair.uid, pair.gid, pair.groups.clone()),
            (1000, 10, vec![10])
        );
        let numeric = resolve(Some("4242:77"), PASSWD, GROUP).unwrap();
        assert_eq!(
            (numeric.uid, numeric.gid, numeric.home.as_str()),
            (4242, 77, "/")
        );
        let root = resolve(None, PASSWD, GROUP).unwrap();
        assert_eq!((root.uid, root.gid, root.home.as_str()), (0, 0, "/root"));
        assert_eq!(resolve(Some("5000"), "", "").unwrap().gid, 0);
    }

    #[test]
    fn unknown_names_are_errors_that_name_them() {
        assert_eq!(
            resolve(Some("ghost"), PASSWD, GROUP),
            Err(UserError::UnknownUser("ghost".into()))
        );
        assert_eq!(
            resolve(Some("app:nogroup"), PASSWD, GROUP),
            Err(UserError::UnknownGroup("nogroup".into()))
        );
        assert!(matches!(
            resolve(Some("app:"), PASSWD, GROUP),
            Err(UserError::Empty(_))
        ));
    }
}
