//! Files readable by their owner alone, on Windows: the counterpart of Unix mode 0600.
//!
//! New keys, state, lock and temporary files are created with a protected DACL holding
//! one entry, full access for the current user (`D:P(A;;FA;;;<user SID>)`), so nothing is
//! inherited from the folder and there is no moment at which another user could open
//! the file. A file's DACL is read back as SDDL text, and [`other_readers`] (pure, tested
//! on every platform) tells who else can read it, for the same warning Unix gives.
//!
//! Invariant: all unsafe code of the crate is in [`sys`] (Windows only), each call
//! checked and every buffer Windows allocates freed with `LocalFree`.

/// The security descriptor, in SDDL, that lets `user_sid` alone at a new file.
pub fn owner_only_sddl(user_sid: &str) -> String {
    format!("D:P(A;;FA;;;{user_sid})")
}

/// Someone besides the owner whom a DACL lets read a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reader {
    /// What a person recognises: "Everyone", "Users", or the SID.
    pub name: String,
    /// The SID for `icacls` (`*S-1-…`), when known.
    pub sid: Option<String>,
    /// The entry was inherited from the folder (`icacls /inheritance:r` drops it).
    pub inherited: bool,
}

/// Who besides `user_sid`, SYSTEM and the Administrators (who can read any file anyway,
/// as root can on Unix) may read a file whose DACL is `sddl` (as
/// `ConvertSecurityDescriptorToStringSecurityDescriptorW` gives it for
/// `DACL_SECURITY_INFORMATION`). No DACL, or a NULL one, lets everyone in. Deny entries
/// are not weighed: the answer errs towards a warning.
pub fn other_readers(sddl: &str, user_sid: &str) -> Vec<Reader> {
    let everyone = || {
        vec![Reader {
            name: "Everyone".into(),
            sid: Some("S-1-1-0".into()),
            inherited: false,
        }]
    };
    let Some(start) = sddl.find("D:") else {
        return everyone();
    };
    let dacl = &sddl[start + 2..];
    // A SACL part ("S:") may follow the DACL's entries.
    let dacl = match dacl.rfind(')') {
        Some(end) => &dacl[..=end],
        None => dacl,
    };
    let flags = &dacl[..dacl.find('(').unwrap_or(dacl.len())];
    if flags.contains("NO_ACCESS_CONTROL") {
        return everyone();
    }
    let mut readers: Vec<Reader> = Vec::new();
    for ace in dacl.split('(').skip(1) {
        let ace = ace.trim_end_matches(')');
        let fields: Vec<&str> = ace.split(';').collect();
        let [kind, ace_flags, rights, _, _, sid, ..] = fields[..] else {
            continue;
        };
        let allows = matches!(kind, "A" | "OA" | "XA" | "ZA");
        let inherit_only = flag_pairs(ace_flags).any(|f| f == "IO");
        if !allows || inherit_only || !can_read(rights) || trusted(sid, user_sid) {
            continue;
        }
        let (name, full_sid) = known_alias(sid);
        if readers.iter().any(|r| r.name == name) {
            continue;
        }
        readers.push(Reader {
            name,
            sid: full_sid,
            inherited: flag_pairs(ace_flags).any(|f| f == "ID"),
        });
    }
    readers
}

/// The warning for a keys file that `readers` can read, with the command that fixes it.
pub fn warning(path: &std::path::Path, readers: &[Reader], user_sid: &str) -> String {
    let names: Vec<&str> = readers.iter().map(|r| r.name.as_str()).collect();
    let mut fix = format!(
        "icacls \"{}\" /inheritance:r /grant:r *{user_sid}:F",
        path.display()
    );
    let explicit: Vec<String> = readers
        .iter()
        .filter(|r| !r.inherited)
        .filter_map(|r| r.sid.as_ref().map(|sid| format!("*{sid}")))
        .collect();
    if !explicit.is_empty() {
        fix.push_str(" /remove:g ");
        fix.push_str(&explicit.join(" "));
    }
    format!(
        "'{}' can be read by other users ({}); run: {fix}",
        path.display(),
        names.join(", ")
    )
}

/// SDDL flags and rights come as runs of two-letter codes ("OICIID", "FRFW").
fn flag_pairs(text: &str) -> impl Iterator<Item = &str> {
    (0..text.len() / 2).filter_map(move |i| text.get(2 * i..2 * i + 2))
}

/// Whether an access mask in SDDL ("0x1200a9", "FA", "GRGW") includes reading the data.
fn can_read(rights: &str) -> bool {
    const FILE_READ_DATA: u32 = 0x1;
    const GENERIC_ALL: u32 = 0x1000_0000;
    const GENERIC_READ: u32 = 0x8000_0000;
    const MAXIMUM_ALLOWED: u32 = 0x0200_0000;
    const READS: u32 = FILE_READ_DATA | GENERIC_ALL | GENERIC_READ | MAXIMUM_ALLOWED;
    let number = if let Some(hex) = rights
        .strip_prefix("0x")
        .or_else(|| rights.strip_prefix("0X"))
    {
        u32::from_str_radix(hex, 16).ok()
    } else if rights.chars().all(|c| c.is_ascii_digit()) && !rights.is_empty() {
        rights.parse().ok()
    } else {
        None
    };
    if let Some(mask) = number {
        return mask & READS != 0;
    }
    if !rights.len().is_multiple_of(2) {
        return true; // Not SDDL we know: assume the worst.
    }
    flag_pairs(rights).any(|code| match code {
        // Codes without the read-data bit. Anything else (FA, FR, GA, GR, CC (bit 0 is
        // FILE_READ_DATA for files), KA, KR, KX, or a code we do not know) may read.
        "GW" | "GX" | "FW" | "FX" | "DC" | "LC" | "SW" | "RP" | "WP" | "DT" | "LO" | "CR"
        | "RC" | "SD" | "WD" | "WO" | "KW" => false,
        _ => true,
    })
}

/// The user, SYSTEM, the Administrators, and the file's owner may read it.
fn trusted(sid: &str, user_sid: &str) -> bool {
    sid.eq_ignore_ascii_case(user_sid)
        || matches!(
            sid,
            "SY" | "S-1-5-18" | "BA" | "S-1-5-32-544" | "OW" | "S-1-3-4" | "CO" | "S-1-3-0"
        )
        // The built-in Administrator account shows as "LA" rather than its SID.
        || (sid == "LA" && user_sid.ends_with("-500"))
}

/// A friendly name and the SID of an SDDL alias; other text is its own name.
fn known_alias(sid: &str) -> (String, Option<String>) {
    let known = [
        ("WD", "Everyone", "S-1-1-0"),
        ("AU", "Authenticated Users", "S-1-5-11"),
        ("BU", "Users", "S-1-5-32-545"),
        ("BG", "Guests", "S-1-5-32-546"),
        ("IU", "INTERACTIVE", "S-1-5-4"),
        ("NU", "NETWORK", "S-1-5-2"),
        ("AN", "ANONYMOUS LOGON", "S-1-5-7"),
        ("PU", "Power Users", "S-1-5-32-547"),
        ("RD", "Remote Desktop Users", "S-1-5-32-555"),
        ("AC", "ALL APPLICATION PACKAGES", "S-1-15-2-1"),
    ];
    for (alias, name, full) in known {
        if sid == alias || sid == full {
            return (name.into(), Some(full.into()));
        }
    }
    if sid.starts_with("S-") {
        (sid.into(), Some(sid.into()))
    } else {
        (format!("SDDL alias {sid}"), None)
    }
}

#[cfg(windows)]
pub use sys::{create, current_user_sid, dacl_sddl};

/// The calls into Windows (windows-sys): the current user's SID, creating a file with a
/// security descriptor, and reading a file's DACL as SDDL.
#[cfg(windows)]
#[allow(unsafe_code)]
mod sys {
    use std::ffi::OsStr;
    use std::fs::File;
    use std::io;
    use std::os::windows::ffi::OsStrExt;
    use std::os::windows::io::FromRawHandle;
    use std::path::Path;
    use std::ptr;

    use windows_sys::Win32::Foundation::{
        CloseHandle, GENERIC_READ, GENERIC_WRITE, HANDLE, INVALID_HANDLE_VALUE, LocalFree,
    };
    use windows_sys::Win32::Security::Authorization::{
        ConvertSecurityDescriptorToStringSecurityDescriptorW, ConvertSidToStringSidW,
        ConvertStringSecurityDescriptorToSecurityDescriptorW, GetNamedSecurityInfoW,
        SDDL_REVISION_1, SE_FILE_OBJECT,
    };
    use windows_sys::Win32::Security::{
        DACL_SECURITY_INFORMATION, GetTokenInformation, PSECURITY_DESCRIPTOR, SECURITY_ATTRIBUTES,
        TOKEN_QUERY, TOKEN_USER, TokenUser,
    };
    use windows_sys::Win32::Storage::FileSystem::{
        CREATE_NEW, CreateFileW, FILE_ATTRIBUTE_NORMAL, FILE_SHARE_DELETE, FILE_SHARE_READ,
        FILE_SHARE_WRITE, OPEN_ALWAYS,
    };
    use windows_sys::Win32::System::Threading::{GetCurrentProcess, OpenProcessToken};

    use crate::keys::store::Create;

    fn wide(text: &OsStr) -> Vec<u16> {
        text.encode_wide().chain(Some(0)).collect()
    }

    /// Reads a NUL-terminated string Windows allocated, then frees it.
    ///
    /// # Safety
    /// `text` is null or a NUL-terminated UTF-16 string from `LocalAlloc`.
    unsafe fn take_local_string(text: *mut u16) -> String {
        if text.is_null() {
            return String::new();
        }
        // SAFETY: the caller's contract: NUL-terminated, so the scan stays inside it.
        let units = unsafe {
            let mut len = 0;
            while *text.add(len) != 0 {
                len += 1;
            }
            std::slice::from_raw_parts(text, len)
        };
        let result = String::from_utf16_lossy(units);
        // SAFETY: allocated by Windows with LocalAlloc, freed once, not used after.
        unsafe { LocalFree(text.cast()) };
        result
    }

    /// The SID of the user this process runs as, as text ("S-1-5-21-…").
    pub fn current_user_sid() -> io::Result<String> {
        let mut token: HANDLE = ptr::null_mut();
        // SAFETY: the pseudo handle of this process; `token` receives a handle we close.
        if unsafe { OpenProcessToken(GetCurrentProcess(), TOKEN_QUERY, &mut token) } == 0 {
            return Err(io::Error::last_os_error());
        }
        // A TOKEN_USER and the SID it points to; u64s keep the buffer aligned for it.
        let mut buffer = vec![0u64; 64];
        let mut needed = 0u32;
        // SAFETY: the buffer is writable for the length passed; `needed` is an out value.
        let ok = unsafe {
            GetTokenInformation(
                token,
                TokenUser,
                buffer.as_mut_ptr().cast(),
                (buffer.len() * 8) as u32,
                &mut needed,
            )
        };
        let error = io::Error::last_os_error();
        // SAFETY: the handle OpenProcessToken gave, closed once.
        unsafe { CloseHandle(token) };
        if ok == 0 {
            return Err(error);
        }
        // SAFETY: on success the buffer starts with a TOKEN_USER whose SID lies inside it.
        let sid = unsafe { (*buffer.as_ptr().cast::<TOKEN_USER>()).User.Sid };
        let mut text: *mut u16 = ptr::null_mut();
        // SAFETY: `sid` is valid while `buffer` lives; `text` receives a LocalAlloc string.
        if unsafe { ConvertSidToStringSidW(sid, &mut text) } == 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a NUL-terminated string from LocalAlloc.
        Ok(unsafe { take_local_string(text) })
    }

    /// Creates (or, with [`Create::OpenOrNew`], opens) `path` for reading and writing; a
    /// new file gets a DACL that lets the current user alone at it.
    pub fn create(path: &Path, how: Create) -> io::Result<File> {
        let sddl = wide(OsStr::new(&super::owner_only_sddl(&current_user_sid()?)));
        let mut descriptor: PSECURITY_DESCRIPTOR = ptr::null_mut();
        // SAFETY: a NUL-terminated string in; `descriptor` receives a LocalAlloc block.
        let ok = unsafe {
            ConvertStringSecurityDescriptorToSecurityDescriptorW(
                sddl.as_ptr(),
                SDDL_REVISION_1,
                &mut descriptor,
                ptr::null_mut(),
            )
        };
        if ok == 0 {
            return Err(io::Error::last_os_error());
        }
        let attributes = SECURITY_ATTRIBUTES {
            nLength: size_of::<SECURITY_ATTRIBUTES>() as u32,
            lpSecurityDescriptor: descriptor,
            bInheritHandle: 0,
        };
        let disposition = match how {
            Create::New => CREATE_NEW,
            Create::OpenOrNew => OPEN_ALWAYS,
        };
        let name = wide(path.as_os_str());
        // SAFETY: NUL-terminated name; attributes and descriptor live across the call.
        let handle = unsafe {
            CreateFileW(
                name.as_ptr(),
                GENERIC_READ | GENERIC_WRITE,
                FILE_SHARE_READ | FILE_SHARE_WRITE | FILE_SHARE_DELETE,
                &attributes,
                disposition,
                FILE_ATTRIBUTE_NORMAL,
                ptr::null_mut(),
            )
        };
        let error = io::Error::last_os_error();
        // SAFETY: the block ConvertString… allocated, freed once after its last use.
        unsafe { LocalFree(descriptor) };
        if handle == INVALID_HANDLE_VALUE {
            return Err(error);
        }
        // SAFETY: a fresh handle that nothing else owns.
        Ok(unsafe { File::from_raw_handle(handle) })
    }

    /// The DACL of the file at `path` as SDDL ("D:PAI(A;;FA;;;S-1-5-…)…").
    pub fn dacl_sddl(path: &Path) -> io::Result<String> {
        let name = wide(path.as_os_str());
        let mut descriptor: PSECURITY_DESCRIPTOR = ptr::null_mut();
        // SAFETY: NUL-terminated name; only the descriptor is asked for, freed below.
        let status = unsafe {
            GetNamedSecurityInfoW(
                name.as_ptr(),
                SE_FILE_OBJECT,
                DACL_SECURITY_INFORMATION,
                ptr::null_mut(),
                ptr::null_mut(),
                ptr::null_mut(),
                ptr::null_mut(),
                &mut descriptor,
            )
        };
        if status != 0 {
            return Err(io::Error::from_raw_os_error(status as i32));
        }
        let mut text: *mut u16 = ptr::null_mut();
        // SAFETY: a valid descriptor in; `text` receives a LocalAlloc string.
        let ok = unsafe {
            ConvertSecurityDescriptorToStringSecurityDescriptorW(
                descriptor,
                SDDL_REVISION_1,
                DACL_SECURITY_INFORMATION,
                &mut text,
                ptr::null_mut(),
            )
        };
        let error = io::Error::last_os_error();
        // SAFETY: the descriptor GetNamedSecurityInfoW allocated, freed once.
        unsafe { LocalFree(descriptor) };
        if ok == 0 {
            return Err(error);
        }
        // SAFETY: a NUL-terminated string from LocalAlloc.
        Ok(unsafe { take_local_string(text) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ME: &str = "S-1-5-21-1004336348-1177238915-682003330-1001";

    fn names(sddl: &str) -> Vec<String> {
        other_readers(sddl, ME)
            .into_iter()
            .map(|r| r.name)
            .collect()
    }

    #[test]
    fn the_dacl_of_a_new_file_lets_the_owner_alone_read() {
        let sddl = owner_only_sddl(ME);
        assert_eq!(sddl, format!("D:P(A;;FA;;;{ME})"));
        assert!(names(&sddl).is_empty());
    }

    #[test]
    fn a_profile_folder_inheritance_is_private() {
        // What a file in C:\Users\me inherits: SYSTEM, Administrators and the user.
        let sddl = format!("D:AI(A;ID;FA;;;SY)(A;ID;FA;;;BA)(A;ID;FA;;;{ME})");
        assert!(names(&sddl).is_empty());
    }

    #[test]
    fn users_and_everyone_who_can_read_are_named() {
        // A file at the root of a data drive: Users and Authenticated Users read it.
        let sddl = format!(
            "D:AI(A;ID;FA;;;BA)(A;ID;FA;;;SY)(A;ID;0x1200a9;;;BU)(A;ID;0x1301bf;;;AU)(A;;FA;;;{ME})"
        );
        assert_eq!(names(&sddl), ["Users", "Authenticated Users"]);
        assert_eq!(names("D:(A;;FR;;;WD)"), ["Everyone"]);
        assert_eq!(
            names("D:(A;;GA;;;S-1-5-21-1-2-3-1002)"),
            ["S-1-5-21-1-2-3-1002"]
        );
    }

    #[test]
    fn rights_without_reading_and_entries_for_children_do_not_count() {
        // Write-only, execute-only, a deny entry, and an inherit-only entry.
        let sddl = "D:(A;;FW;;;BU)(A;;0x1200a0;;;AU)(D;;FA;;;WD)(A;OICIIO;FA;;;WD)";
        assert!(names(sddl).is_empty());
    }

    #[test]
    fn no_dacl_or_a_null_one_means_everyone() {
        assert_eq!(names(""), ["Everyone"]);
        assert_eq!(names("D:NO_ACCESS_CONTROL"), ["Everyone"]);
    }

    #[test]
    fn the_warning_names_readers_and_the_fix() {
        let readers = other_readers(
            &format!("D:(A;ID;0x1200a9;;;BU)(A;;FR;;;WD)(A;;FA;;;{ME})"),
            ME,
        );
        let path = std::path::Path::new(r"D:\keys.json");
        assert_eq!(
            warning(path, &readers, ME),
            format!(
                "'D:\\keys.json' can be read by other users (Users, Everyone); run: \
                 icacls \"D:\\keys.json\" /inheritance:r /grant:r *{ME}:F /remove:g *S-1-1-0"
            )
        );
    }
}
