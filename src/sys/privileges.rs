//! Who the workers run as (`--user`, `--group`): the names resolved in the
//! master, once per config; the switch itself in each worker after the fork,
//! before it serves. The master stays as it was started (root, to bind port 80
//! again on a reload that changes the address).

use nix::unistd::{getegid, geteuid, setgid, setgroups, setuid, Gid, Group, Uid, User};

/// The ids a worker switches to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunAs {
    pub uid: Uid,
    pub gid: Gid,
}

/// The ids `user` and `group` name (a name, or a number); the group defaults to
/// the user's own. `None` when neither is given. An unknown name, or another
/// user than the master's without root, is an error that says which.
pub fn resolve(user: Option<&str>, group: Option<&str>) -> Result<Option<RunAs>, String> {
    if user.is_none() && group.is_none() {
        return Ok(None);
    }
    let user = user.map(find_user).transpose()?;
    let gid = match group {
        Some(name) => find_group(name)?,
        None => user.as_ref().map_or_else(getegid, |user| user.gid),
    };
    let uid = user.map_or_else(geteuid, |user| user.uid);
    let run_as = RunAs { uid, gid };
    if !geteuid().is_root() && (uid != geteuid() || gid != getegid()) {
        return Err(format!(
            "running the workers as uid {uid}, gid {gid} needs the master to run as root (it runs as uid {})",
            geteuid()
        ));
    }
    Ok(Some(run_as))
}

fn find_user(name: &str) -> Result<User, String> {
    let found = match name.parse::<u32>() {
        Ok(uid) => User::from_uid(Uid::from_raw(uid)),
        Err(_) => User::from_name(name),
    };
    match found {
        Ok(Some(user)) => Ok(user),
        Ok(None) => Err(format!("no such user '{name}'")),
        Err(err) => Err(format!("cannot look up user '{name}': {err}")),
    }
}

fn find_group(name: &str) -> Result<Gid, String> {
    let found = match name.parse::<u32>() {
        Ok(gid) => Group::from_gid(Gid::from_raw(gid)),
        Err(_) => Group::from_name(name),
    };
    match found {
        Ok(Some(group)) => Ok(group.gid),
        Ok(None) => Err(format!("no such group '{name}'")),
        Err(err) => Err(format!("cannot look up group '{name}': {err}")),
    }
}

/// In the worker, after the fork: the supplementary groups, the group, then the
/// user (last: after it, the others are no longer permitted). Nothing to do
/// when the ids are already the process's.
pub fn switch(run_as: RunAs) -> nix::Result<()> {
    if geteuid() == run_as.uid && getegid() == run_as.gid {
        return Ok(());
    }
    setgroups(&[run_as.gid])?;
    setgid(run_as.gid)?;
    setuid(run_as.uid)
}
