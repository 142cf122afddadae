<#
.SYNOPSIS
Removes API keys from roo-proxy's keys file (replaces the old remove_roo_key.ps1).

.EXAMPLE
.\remove_roo_key.ps1 -Prefix sk-or-v1-ab12
.\remove_roo_key.ps1 -Prefix work          # by label
.NOTES
Windows' default execution policy blocks scripts. Run it as
    powershell -ExecutionPolicy Bypass -File .\remove_roo_key.ps1 -Prefix work
or allow local scripts once (Set-ExecutionPolicy -Scope CurrentUser RemoteSigned) and,
for a downloaded copy, Unblock-File .\remove_roo_key.ps1. See README, "On Windows".
When Windows PowerShell 5.1 captures roo-proxy's output on a console whose code page is
not UTF-8, roo-proxy prints plain ASCII ("..." in masked keys); ROO_PROXY_ASCII=0 or 1
chooses.
#>
param(
    [Parameter(Mandatory = $true, Position = 0)] [string] $Prefix,
    [switch] $All,
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
    [Console]::Error.WriteLine("remove_roo_key.ps1: cannot find roo-proxy (looked beside this script in $PSScriptRoot, on PATH, and in ..\target\release). Build it with 'cargo build --release --locked', or put roo-proxy.exe beside this script.")
    exit 127
}

$arguments = @('keys', 'remove', $Prefix)
if ($All) { $arguments += '--all' }
if ($KeysFile) { $arguments += @('--keys-file', $KeysFile) }
& $proxy @arguments
exit $LASTEXITCODE
