//! The application a site runs, and `app.*`: installing it in the container.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{MaybeVmid, example_site};
use crate::ids::{SiteId, Vmid};
use crate::message::{Command, Event, Kind, Message, StepError};

/// The application installed in a site's container: `wordpress` (the default), `none` for a
/// bare container (the install step is skipped), or the name of an app the installer is
/// configured with (`installer.apps.<name>`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(transparent)]
pub struct App(#[schemars(regex(pattern = r"^[a-z][a-z0-9_-]{0,31}$"))] pub String);

impl App {
    /// WordPress on nginx, php-fpm and MariaDB.
    pub fn wordpress() -> Self {
        Self("wordpress".into())
    }

    /// A bare container.
    pub fn none() -> Self {
        Self("none".into())
    }

    /// Whether the install step is skipped.
    pub fn is_none(&self) -> bool {
        self.0 == "none"
    }

    /// The app's name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for App {
    fn default() -> Self {
        Self::wordpress()
    }
}

/// Install an application in a running container.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct AppInstall {
    /// The site.
    pub site_id: SiteId,
    /// The container.
    pub vmid: Vmid,
    /// The app name from config, such as `wordpress`.
    pub app: String,
    /// The public URL of the site.
    pub site_url: String,
    /// The site title.
    pub title: String,
    /// The administrator's e-mail address. Credentials are generated and stored, never sent.
    pub admin_email: String,
}
impl MaybeVmid for AppInstall {
    fn vmid_opt(&self) -> Option<Vmid> {
        Some(self.vmid)
    }
}
command!(
    AppInstall,
    "app.install",
    "Install an application in a container through pct exec.",
    AppInstallFailed,
    AppInstall {
        site_id: example_site(),
        vmid: Vmid(123),
        app: "wordpress".into(),
        site_url: "https://blog.example.org".into(),
        title: "Blog".into(),
        admin_email: "alice@example.org".into(),
    }
);

/// The application is installed and verified.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct AppInstalled {
    /// The site.
    pub site_id: SiteId,
    /// The container.
    pub vmid: Vmid,
    /// The app name.
    pub app: String,
}
event!(
    AppInstalled,
    "app.installed",
    "An application was installed and verified.",
    AppInstalled {
        site_id: example_site(),
        vmid: Vmid(123),
        app: "wordpress".into(),
    }
);
failed_event!(
    AppInstallFailed,
    "app.install_failed",
    "Installing an application failed."
);

/// Check that a site's application answers in its running container (after a restore):
/// `wp core is-installed` for WordPress; for other apps, that the container runs commands.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct AppCheck {
    /// The site.
    pub site_id: SiteId,
    /// The container.
    pub vmid: Vmid,
    /// The app name, such as `wordpress`.
    pub app: String,
}
impl MaybeVmid for AppCheck {
    fn vmid_opt(&self) -> Option<Vmid> {
        Some(self.vmid)
    }
}
command!(
    AppCheck,
    "app.check",
    "Check that a site's application is up in its container.",
    AppCheckFailed,
    AppCheck {
        site_id: example_site(),
        vmid: Vmid(123),
        app: "wordpress".into(),
    }
);

/// The application answered.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct AppChecked {
    /// The site.
    pub site_id: SiteId,
    /// The container.
    pub vmid: Vmid,
    /// The app name.
    pub app: String,
}
event!(
    AppChecked,
    "app.checked",
    "A site's application answered its check.",
    AppChecked {
        site_id: example_site(),
        vmid: Vmid(123),
        app: "wordpress".into(),
    }
);
failed_event!(
    AppCheckFailed,
    "app.check_failed",
    "A site's application failed its check."
);
