/*
 * A stand-in for Windows' bcryptprimitives.dll, for the Wine prefix of
 * scripts/smoke-windows.sh only. Rust's standard library takes its random numbers
 * (HashMap seeds) from ProcessPrng in bcryptprimitives.dll, which every Windows since
 * 10 has; Debian 12's Wine (8.0) lacks the DLL, so no Rust program starts under it.
 * This one answers ProcessPrng with RtlGenRandom (advapi32's SystemFunction036),
 * Wine's own system random source. It is never shipped and never used on Windows.
 *
 * Built by scripts/smoke-windows.sh:
 *   x86_64-w64-mingw32-gcc -shared -O2 -o bcryptprimitives.dll bcryptprimitives.c -ladvapi32
 */
#include <windows.h>

BOOLEAN WINAPI SystemFunction036(PVOID buffer, ULONG length);

__declspec(dllexport) BOOL WINAPI ProcessPrng(PBYTE data, SIZE_T length)
{
    while (length > 0) {
        ULONG chunk = length > 0x10000000 ? 0x10000000 : (ULONG)length;
        if (!SystemFunction036(data, chunk))
            return FALSE;
        data += chunk;
        length -= chunk;
    }
    return TRUE;
}
