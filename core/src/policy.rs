//! The permission policy: identities -> people -> groups -> allowed commands.
//!
//! Identities are what front ends vouch for (`irc:<services account>`, `matrix:@u:server`,
//! `gitlab:<username>`, `console:<user>`); people list identity patterns (globs). Each
//! command names the groups allowed; `*` means everyone, including unknown identities.
//! A command nobody configured is refused — deny by default.

use std::collections::BTreeMap;

use globset::{Glob, GlobSet, GlobSetBuilder};

#[derive(Debug, thiserror::Error)]
#[error("people[{index}] ({person}): identity pattern `{pattern}` is not a valid glob: {source}")]
pub struct PolicyError {
    pub index: usize,
    pub person: String,
    pub pattern: String,
    pub source: globset::Error,
}

/// A person as the configuration describes them.
#[derive(Debug, Clone)]
pub struct PersonSpec {
    pub name: String,
    pub identities: Vec<String>,
    pub groups: Vec<String>,
}

/// Who is asking, as shepherd sees them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub identity: String,
    pub person: Option<String>,
    pub groups: Vec<String>,
}

impl Principal {
    /// Whether `identity`/`person` (of a lock, a confirmation) is this principal: the same person
    /// (on any front end), or the same identity when it maps to no person.
    pub fn is(&self, identity: &str, person: Option<&str>) -> bool {
        match (&self.person, person) {
            (Some(a), Some(b)) => a == b,
            _ => self.identity == identity,
        }
    }
}

/// Why a command was refused: which groups would have been enough.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub command: String,
    pub needed: Vec<String>,
}

struct Person {
    name: String,
    patterns: GlobSet,
    groups: Vec<String>,
}

pub struct Policy {
    people: Vec<Person>,
    permissions: BTreeMap<String, Vec<String>>,
}

impl Policy {
    pub fn new(
        people: &[PersonSpec],
        permissions: BTreeMap<String, Vec<String>>,
    ) -> Result<Self, PolicyError> {
        let mut compiled = Vec::with_capacity(people.len());
        for (index, p) in people.iter().enumerate() {
            let mut set = GlobSetBuilder::new();
            for pattern in &p.identities {
                let glob = Glob::new(pattern).map_err(|source| PolicyError {
                    index,
                    person: p.name.clone(),
                    pattern: pattern.clone(),
                    source,
                })?;
                set.add(glob);
            }
            let patterns = set.build().map_err(|source| PolicyError {
                index,
                person: p.name.clone(),
                pattern: p.identities.join(", "),
                source,
            })?;
            compiled.push(Person {
                name: p.name.clone(),
                patterns,
                groups: p.groups.clone(),
            });
        }
        Ok(Self {
            people: compiled,
            permissions,
        })
    }

    /// The first person whose patterns match the identity; unknown identities have no groups.
    pub fn resolve(&self, identity: &str) -> Principal {
        match self.people.iter().find(|p| p.patterns.is_match(identity)) {
            Some(p) => Principal {
                identity: identity.to_string(),
                person: Some(p.name.clone()),
                groups: p.groups.clone(),
            },
            None => Principal {
                identity: identity.to_string(),
                person: None,
                groups: Vec::new(),
            },
        }
    }

    /// The groups allowed to run a command (empty when nobody is).
    pub fn allowed_groups(&self, command: &str) -> &[String] {
        self.permissions
            .get(command)
            .map(Vec::as_slice)
            .unwrap_or(&[])
    }

    pub fn check(&self, who: &Principal, command: &str) -> Result<(), Refusal> {
        let allowed = self.allowed_groups(command);
        let ok = allowed
            .iter()
            .any(|g| g == "*" || who.groups.iter().any(|mine| mine == g));
        if ok {
            Ok(())
        } else {
            Err(Refusal {
                command: command.to_string(),
                needed: allowed.to_vec(),
            })
        }
    }

    /// Commands this principal may run, sorted.
    pub fn commands_for(&self, who: &Principal) -> Vec<String> {
        self.permissions
            .keys()
            .filter(|c| self.check(who, c).is_ok())
            .cloned()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_person_on_another_front_end_is_the_same_asker() {
        let who = Principal {
            identity: "irc:alice".into(),
            person: Some("alice".into()),
            groups: vec![],
        };
        assert!(who.is("gitlab:alice", Some("alice")));
        assert!(!who.is("irc:bob", Some("bob")));
        let anonymous = Principal {
            identity: "irc:carol".into(),
            person: None,
            groups: vec![],
        };
        assert!(anonymous.is("irc:carol", None));
        assert!(!anonymous.is("irc:dave", None));
    }

    fn policy() -> Policy {
        let people = vec![
            PersonSpec {
                name: "alice".into(),
                identities: vec!["irc:alice".into(), "matrix:@alice:example.org".into()],
                groups: vec!["developers".into()],
            },
            PersonSpec {
                name: "local".into(),
                identities: vec!["console:*".into()],
                groups: vec!["admins".into()],
            },
        ];
        let mut perms = BTreeMap::new();
        perms.insert("ping".to_string(), vec!["*".to_string()]);
        perms.insert(
            "retrigger".to_string(),
            vec!["admins".to_string(), "developers".to_string()],
        );
        perms.insert("deploy".to_string(), vec!["admins".to_string()]);
        Policy::new(&people, perms).expect("valid policy")
    }

    #[test]
    fn identities_map_to_people_and_groups() {
        let p = policy();
        let a = p.resolve("matrix:@alice:example.org");
        assert_eq!(a.person.as_deref(), Some("alice"));
        assert_eq!(a.groups, vec!["developers".to_string()]);
        let c = p.resolve("console:root");
        assert_eq!(c.person.as_deref(), Some("local"));
        let nobody = p.resolve("irc:mallory");
        assert_eq!(nobody.person, None);
        assert!(nobody.groups.is_empty());
    }

    #[test]
    fn checks_groups_and_everyone() {
        let p = policy();
        let alice = p.resolve("irc:alice");
        let mallory = p.resolve("irc:mallory");
        assert!(p.check(&alice, "retrigger").is_ok());
        assert!(p.check(&mallory, "ping").is_ok());
        let refusal = p.check(&alice, "deploy").expect_err("alice is no admin");
        assert_eq!(refusal.needed, vec!["admins".to_string()]);
        let refusal = p
            .check(&mallory, "retrigger")
            .expect_err("unknown identity");
        assert_eq!(refusal.needed.len(), 2);
        // Nobody configured it: nobody may.
        assert!(p.check(&p.resolve("console:x"), "unsilence").is_err());
        assert_eq!(p.commands_for(&alice), vec!["ping", "retrigger"]);
    }

    #[test]
    fn a_bad_pattern_names_the_person() {
        let people = vec![PersonSpec {
            name: "bob".into(),
            identities: vec!["irc:[bob".into()],
            groups: vec![],
        }];
        let err = Policy::new(&people, BTreeMap::new())
            .err()
            .expect("invalid glob");
        assert!(err.to_string().contains("people[0] (bob)"), "{err}");
    }
}
