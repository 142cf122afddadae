<#
.SYNOPSIS
Adds an API key to roo-proxy's keys file (replaces the old add_roo_key.ps1).

.EXAMPLE
.\add_roo_key.ps1 -Key sk-or-v1-... -Label work
.\add_roo_key.ps1            # asks for the key without showing it
.NOTES
Windows' default execution policy blocks scripts. Run it as
    powershell -ExecutionPolicy Bypass -File .\add_roo_key.ps1 -Label work
or allow local scripts once (Set-ExecutionPolicy -Scope CurrentUser RemoteSigned) and,
for a downloaded copy, Unblock-File .\add_roo_key.ps1. See README, "On Windows".
When Windows PowerShell 5.1 captures roo-proxy's output on a console whose code page is
not UTF-8, roo-proxy prints plain ASCII ("..." in masked keys); ROO_PROXY_ASCII=0 or 1
chooses.
#>
param(
    [Parameter(Position = 0)] [string] $Key,
    [string] $Label,
    [string] $KeysFile
)
$ErrorActionPreference = 'Stop'

# roo-proxy beside this script, then on PATH, then in this repo's target\release.
function Find-RooProxy {
    foreach ($name in 'roo-proxy.exe', 'roo-proxy') {
        $candidate = Join-Path $PSScriptRoot $name
        if (Test-Path $candidate -PathType Leaf) { return $candidate }
    }
    $onPath = Get-Command roo-proxy -ErrorAction SilentlyContinue
    if ($onPath) { return $onPath.Source }
    foreach ($name in 'roo-proxy.exe', 'roo-proxy') {
        $candidate = Join-Path (Join-Path (Join-Path $PSScriptRoot '..') 'target\release') $name
        if (Test-Path $candidate -PathType Leaf) { return $candidate }
    }
    return $null
}

$proxy = Find-RooProxy
if (-not $proxy) {
    [Console]::Error.WriteLine("add_roo_key.ps1: cannot find roo-proxy (looked beside this script in $PSScriptRoot, on PATH, and in ..\target\release). Build it with 'cargo build --release --locked', or put roo-proxy.exe beside this script.")
    exit 127
}

$arguments = @('keys', 'add')
if ($Label) { $arguments += @('--label', $Label) }
if ($KeysFile) { $arguments += @('--keys-file', $KeysFile) }
if ($Key) {
    # On standard input, so the key does not show in the process list.
    $Key | & $proxy @arguments
} else {
    & $proxy @arguments
}
exit $LASTEXITCODE
