/*
 * kernbin's Level Zero test driver: a small Level Zero driver for the CPU.
 *
 * There is no Intel GPU on the machines kernbin is developed and tested on, so the
 * Level Zero backend is exercised through the real Level Zero loader (libze_loader)
 * with this driver, loaded by `ZE_ENABLE_ALT_DRIVERS=/path/to/libze_kernbin_cpu.so`.
 * It implements the subset of the core API kernbin uses on top of an OpenCL CPU
 * runtime (Intel's, from PyPI intel-opencl-rt):
 *
 *   SPIR-V module      clCreateProgramWithIL + clBuildProgram
 *   native binary      a 48-byte header (magic, format, driver version, device UUID, payload
 *                      size and FNV-1a checksum) + CL_PROGRAM_BINARIES (an x86-64 ELF); anything
 *                      else, a header for another driver version or device, or a payload that
 *                      fails its checksum is ZE_RESULT_ERROR_INVALID_NATIVE_BINARY, decided before
 *                      the OpenCL runtime sees a byte of it: the runtime aborts on some corrupt
 *                      binaries, and an Intel GPU zebin (an ELF with e_machine 205) or random
 *                      bytes never reach clCreateProgramWithBinary
 *   native load        clCreateProgramWithBinary + clBuildProgram
 *   memory             cl_intel_unified_shared_memory (host, device, shared)
 *   immediate lists    synchronous: every append runs to completion before returning
 *   events             host-visible flags, signalled when the append that names them returns
 *
 * It follows the spec where the subset reaches: size-first queries, null checks, result
 * codes. The loader demands every one of the 53 DDI table getters (23 ze, 13 zet, 17 zes);
 * entries this driver does not implement stay null.
 *
 * Test knobs (environment):
 *   KBZE_OPENCL_LIB      the OpenCL ICD loader to use (default libOpenCL.so.1)
 *   KBZE_DRIVER_VERSION  the driver version to report (default 0x00010000), to play a
 *                        driver update: binaries of another version are then refused
 *   KBZE_SPILL_BYTES     spillMemSize to report for kernels not built with
 *                        -ze-opt-large-register-file (default 0: the CPU does not spill)
 *   KBZE_DEVICE_IP       the ipVersion to report in ze_device_ip_version_ext_t (strtoul base 0,
 *                        0..0xffffffff, e.g. 0x030f0007 = 12.60.7, a PVC; default 0x00010000),
 *                        to play an Intel GPU: while it is set the device also reports
 *                        ZE_DEVICE_TYPE_GPU and vendorId 0x8086 (default ZE_DEVICE_TYPE_CPU);
 *                        an empty or invalid value (not a whole number, negative, out of range)
 *                        counts as unset
 *   KBZE_DEVICE_NAME     the device name to report (default "<OpenCL CPU name> (kernbin Level
 *                        Zero CPU test driver)"), cut to ZE_MAX_DEVICE_NAME - 1 bytes at a UTF-8
 *                        character boundary; empty counts as unset
 *   KBZE_CRASH_ON_NATIVE when set, zeModuleCreate(ZE_MODULE_FORMAT_NATIVE) aborts the process
 *                        (SIGABRT) on any native binary this process's driver did not itself hand
 *                        out (zeModuleGetNativeBinary), to play a driver that crashes on foreign
 *                        bytes (as an older runtime did on a newer zebin) but runs its own: kernbin's
 *                        isolated check must report it, and a rebuild from the IR must then work
 *   KBZE_RECOMPILE_FROM_IR when set (non-empty), a native load that passes every check plays Intel's
 *                        driver rejecting the native code and recompiling from the IR inside it: the
 *                        module loads and its build log starts with NEO's warning ("... [-Wrecompiled-
 *                        from-ir]"), left out, as NEO does, when the build flags hold
 *                        -Wno-recompiled-from-ir (a flag this driver never hands to OpenCL)
 * All knobs but KBZE_SPILL_BYTES, KBZE_CRASH_ON_NATIVE and KBZE_RECOMPILE_FROM_IR are read once, at zeInit.
 */
#define _GNU_SOURCE
#define CL_TARGET_OPENCL_VERSION 300
#include <CL/cl.h>
#include <CL/cl_ext.h>
#include <dlfcn.h>
#include <errno.h>
#include <level_zero/ze_api.h>
#include <level_zero/ze_ddi.h>
#include <level_zero/zes_ddi.h>
#include <level_zero/zet_ddi.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifndef ZE_STRUCTURE_TYPE_DEVICE_IP_VERSION_EXT
/* ze_device_ip_version_ext_t came with API 1.6; older headers (Debian's 1.8.12 loader) lack it. */
#define ZE_STRUCTURE_TYPE_DEVICE_IP_VERSION_EXT ((ze_structure_type_t)0x1000f)
typedef struct _ze_device_ip_version_ext_t {
    ze_structure_type_t stype;
    const void *pNext;
    uint32_t ipVersion;
} ze_device_ip_version_ext_t;
#endif

#define KBZE_IP_VERSION 0x00010000u         /* "kernbin CPU 1.0" */
#define KBZE_VENDOR_INTEL 0x8086u
#define ELF_EM_X86_64 62u                   /* what Intel's CPU runtime puts in CL_PROGRAM_BINARIES */
#define ELF_EM_INTELGT 205u                 /* an Intel GPU binary (zebin) */
#define ELF64_EHDR_SIZE 64
#define NATIVE_MAGIC "KBZECPU\0"
/* checksums of the native binaries this process's driver handed out (KBZE_CRASH_ON_NATIVE spares them) */
static uint64_t g_handed[4096];
static size_t g_handed_n;
static pthread_mutex_t g_handed_lock = PTHREAD_MUTEX_INITIALIZER;
#define NATIVE_FORMAT 2u                    /* 1: the 40-byte header without the checksum */
#define NATIVE_HEADER 48                    /* magic 8, format 4, driver 4, uuid 16, size 8, fnv1a64 8 */
#define NATIVE_CHECKSUM_SEED 0xcbf29ce484222325ull
#define LARGE_GRF_FLAG "-ze-opt-large-register-file"
#define NO_RECOMPILE_WARNING_FLAG "-Wno-recompiled-from-ir"
/* NEO's text (shared/source/compiler_interface/compiler_warnings/compiler_warnings.h) */
#define RECOMPILED_FROM_IR_WARNING "warning: module got recompiled from IR because provided native binary is " \
    "incompatible with underlying device and/or driver [-Wrecompiled-from-ir]"

/* ---- OpenCL entry points, resolved from the ICD loader at zeInit --------------------- */
static struct {
    void *lib;
    cl_int (*GetPlatformIDs)(cl_uint, cl_platform_id *, cl_uint *);
    cl_int (*GetDeviceIDs)(cl_platform_id, cl_device_type, cl_uint, cl_device_id *, cl_uint *);
    cl_int (*GetDeviceInfo)(cl_device_id, cl_device_info, size_t, void *, size_t *);
    cl_context (*CreateContext)(const cl_context_properties *, cl_uint, const cl_device_id *, void *, void *, cl_int *);
    cl_int (*ReleaseContext)(cl_context);
    cl_command_queue (*CreateCommandQueueWithProperties)(cl_context, cl_device_id, const cl_queue_properties *, cl_int *);
    cl_int (*ReleaseCommandQueue)(cl_command_queue);
    cl_program (*CreateProgramWithIL)(cl_context, const void *, size_t, cl_int *);
    cl_program (*CreateProgramWithBinary)(cl_context, cl_uint, const cl_device_id *, const size_t *,
                                          const unsigned char **, cl_int *, cl_int *);
    cl_int (*BuildProgram)(cl_program, cl_uint, const cl_device_id *, const char *, void *, void *);
    cl_int (*GetProgramInfo)(cl_program, cl_program_info, size_t, void *, size_t *);
    cl_int (*GetProgramBuildInfo)(cl_program, cl_device_id, cl_program_build_info, size_t, void *, size_t *);
    cl_int (*ReleaseProgram)(cl_program);
    cl_kernel (*CreateKernel)(cl_program, const char *, cl_int *);
    cl_int (*ReleaseKernel)(cl_kernel);
    cl_int (*SetKernelArg)(cl_kernel, cl_uint, size_t, const void *);
    cl_int (*GetKernelInfo)(cl_kernel, cl_kernel_info, size_t, void *, size_t *);
    cl_int (*GetKernelWorkGroupInfo)(cl_kernel, cl_device_id, cl_kernel_work_group_info, size_t, void *, size_t *);
    cl_int (*EnqueueNDRangeKernel)(cl_command_queue, cl_kernel, cl_uint, const size_t *, const size_t *,
                                   const size_t *, cl_uint, const cl_event *, cl_event *);
    cl_int (*Finish)(cl_command_queue);
    void *(*GetExtensionFunctionAddressForPlatform)(cl_platform_id, const char *);
    /* cl_intel_unified_shared_memory */
    clHostMemAllocINTEL_fn HostMemAlloc;
    clDeviceMemAllocINTEL_fn DeviceMemAlloc;
    clSharedMemAllocINTEL_fn SharedMemAlloc;
    clMemBlockingFreeINTEL_fn MemBlockingFree;
    clSetKernelArgMemPointerINTEL_fn SetKernelArgMemPointer;
    clEnqueueMemcpyINTEL_fn EnqueueMemcpy;
} cl;

/* ---- handles -------------------------------------------------------------------------- */
struct kb_driver { uint32_t version; uint8_t uuid[ZE_MAX_DRIVER_UUID_SIZE]; };
struct kb_device { cl_platform_id platform; cl_device_id device; char name[ZE_MAX_DEVICE_NAME];
                   uint8_t uuid[ZE_MAX_DEVICE_UUID_SIZE]; ze_device_type_t type; uint32_t vendor_id;
                   uint32_t ip_version; };
struct kb_context { cl_context ctx; cl_command_queue queue; };
struct kb_alloc { void *ptr; size_t size; struct kb_alloc *next; };
struct kb_log { char *text; };
struct kb_module { struct kb_context *ctx; cl_program prog; int large_grf; uint8_t *native; size_t native_size;
                   char *names_buf; const char **names; uint32_t num_names; };
struct kb_kernel { struct kb_module *module; cl_kernel k; uint32_t group[3]; char *name; cl_uint num_args; };
struct kb_cmdlist { struct kb_context *ctx; };
struct kb_event { volatile int signalled; };
struct kb_event_pool { uint32_t count; struct kb_event *events; };

static struct kb_driver g_driver;
static struct kb_device g_device;
static int g_ready;
static ze_result_t g_init_result = ZE_RESULT_ERROR_UNINITIALIZED;
static pthread_mutex_t g_lock = PTHREAD_MUTEX_INITIALIZER;
static struct kb_alloc *g_allocs;        /* live USM allocations: pointer arguments are recognised by them */

static uint64_t fnv1a(const void *data, size_t n, uint64_t h) {
    const uint8_t *p = data;
    for (size_t i = 0; i < n; i++) { h ^= p[i]; h *= 0x100000001b3ull; }
    return h;
}

static ze_result_t cl_to_ze(cl_int err) {
    switch (err) {
    case CL_SUCCESS: return ZE_RESULT_SUCCESS;
    case CL_OUT_OF_HOST_MEMORY: return ZE_RESULT_ERROR_OUT_OF_HOST_MEMORY;
    case CL_OUT_OF_RESOURCES: case CL_MEM_OBJECT_ALLOCATION_FAILURE: return ZE_RESULT_ERROR_OUT_OF_DEVICE_MEMORY;
    case CL_INVALID_BINARY: return ZE_RESULT_ERROR_INVALID_NATIVE_BINARY;
    case CL_BUILD_PROGRAM_FAILURE: case CL_INVALID_BUILD_OPTIONS: case CL_INVALID_VALUE:
        return ZE_RESULT_ERROR_MODULE_BUILD_FAILURE;
    case CL_INVALID_KERNEL_NAME: return ZE_RESULT_ERROR_INVALID_KERNEL_NAME;
    case CL_INVALID_ARG_INDEX: return ZE_RESULT_ERROR_INVALID_KERNEL_ARGUMENT_INDEX;
    case CL_INVALID_ARG_SIZE: return ZE_RESULT_ERROR_INVALID_KERNEL_ARGUMENT_SIZE;
    case CL_INVALID_WORK_GROUP_SIZE: return ZE_RESULT_ERROR_INVALID_GROUP_SIZE_DIMENSION;
    case CL_INVALID_KERNEL_ARGS: return ZE_RESULT_ERROR_INVALID_ARGUMENT;
    default: return ZE_RESULT_ERROR_UNKNOWN;
    }
}

#define NEED(p) do { if (!(p)) return ZE_RESULT_ERROR_INVALID_NULL_POINTER; } while (0)
#define NEED_HANDLE(h) do { if (!(h)) return ZE_RESULT_ERROR_INVALID_NULL_HANDLE; } while (0)
#define READY() do { if (!g_ready) return ZE_RESULT_ERROR_UNINITIALIZED; } while (0)

/* ---- global / driver -------------------------------------------------------------------- */
static int load_opencl(void) {
    const char *name = getenv("KBZE_OPENCL_LIB");
    cl.lib = dlopen(name && *name ? name : "libOpenCL.so.1", RTLD_NOW | RTLD_LOCAL);
    if (!cl.lib) return 0;
#define SYM(f) if (!(*(void **)&cl.f = dlsym(cl.lib, "cl" #f))) return 0
    SYM(GetPlatformIDs); SYM(GetDeviceIDs); SYM(GetDeviceInfo); SYM(CreateContext); SYM(ReleaseContext);
    SYM(CreateCommandQueueWithProperties); SYM(ReleaseCommandQueue); SYM(CreateProgramWithIL);
    SYM(CreateProgramWithBinary); SYM(BuildProgram); SYM(GetProgramInfo); SYM(GetProgramBuildInfo);
    SYM(ReleaseProgram); SYM(CreateKernel); SYM(ReleaseKernel); SYM(SetKernelArg); SYM(GetKernelInfo);
    SYM(GetKernelWorkGroupInfo); SYM(EnqueueNDRangeKernel); SYM(Finish); SYM(GetExtensionFunctionAddressForPlatform);
#undef SYM
    return 1;
}

static int pick_device(void) {
    cl_uint np = 0;
    cl_platform_id platforms[16];
    if (cl.GetPlatformIDs(16, platforms, &np) != CL_SUCCESS) return 0;
    for (cl_uint i = 0; i < np && i < 16; i++) {
        cl_device_id d;
        cl_uint nd = 0;
        if (cl.GetDeviceIDs(platforms[i], CL_DEVICE_TYPE_CPU, 1, &d, &nd) != CL_SUCCESS || nd == 0) continue;
        char il[256] = "";
        cl.GetDeviceInfo(d, CL_DEVICE_IL_VERSION, sizeof il, il, NULL);
        if (!strstr(il, "SPIR-V")) continue;
        void *(*ext)(cl_platform_id, const char *) = cl.GetExtensionFunctionAddressForPlatform;
        cl.HostMemAlloc = (clHostMemAllocINTEL_fn)ext(platforms[i], "clHostMemAllocINTEL");
        cl.DeviceMemAlloc = (clDeviceMemAllocINTEL_fn)ext(platforms[i], "clDeviceMemAllocINTEL");
        cl.SharedMemAlloc = (clSharedMemAllocINTEL_fn)ext(platforms[i], "clSharedMemAllocINTEL");
        cl.MemBlockingFree = (clMemBlockingFreeINTEL_fn)ext(platforms[i], "clMemBlockingFreeINTEL");
        cl.SetKernelArgMemPointer = (clSetKernelArgMemPointerINTEL_fn)ext(platforms[i], "clSetKernelArgMemPointerINTEL");
        cl.EnqueueMemcpy = (clEnqueueMemcpyINTEL_fn)ext(platforms[i], "clEnqueueMemcpyINTEL");
        if (!cl.HostMemAlloc || !cl.DeviceMemAlloc || !cl.SharedMemAlloc || !cl.MemBlockingFree ||
            !cl.SetKernelArgMemPointer || !cl.EnqueueMemcpy) continue;
        g_device.platform = platforms[i];
        g_device.device = d;
        char cpu[200] = "CPU";
        cl.GetDeviceInfo(d, CL_DEVICE_NAME, sizeof cpu, cpu, NULL);
        snprintf(g_device.name, sizeof g_device.name, "%s (kernbin Level Zero CPU test driver)", cpu);
        char drv[128] = "";
        cl.GetDeviceInfo(d, CL_DRIVER_VERSION, sizeof drv, drv, NULL);
        uint64_t h = fnv1a(cpu, strlen(cpu), 0xcbf29ce484222325ull);
        uint64_t h2 = fnv1a(drv, strlen(drv), h);
        memcpy(g_device.uuid, &h, 8);
        memcpy(g_device.uuid + 8, &h2, 8);
        return 1;
    }
    return 0;
}

/* A whole number in 0..UINT32_MAX (strtoul base 0: decimal, 0x hex, 0 octal), surrounding
 * white space allowed; returns 0 (and leaves *out alone) for unset, empty or invalid. */
static int env_u32(const char *var, uint32_t *out) {
    const char *s = getenv(var);
    if (!s) return 0;
    while (*s == ' ' || *s == '\t' || *s == '\n' || *s == '\r') s++;
    if (!*s || *s == '-' || *s == '+') return 0;           /* strtoul would wrap "-1" to ULONG_MAX */
    char *end = NULL;
    errno = 0;
    unsigned long v = strtoul(s, &end, 0);
    if (end == s || errno == ERANGE || v > UINT32_MAX) return 0;
    while (*end == ' ' || *end == '\t' || *end == '\n' || *end == '\r') end++;
    if (*end) return 0;
    *out = (uint32_t)v;
    return 1;
}

/* KBZE_DEVICE_IP / KBZE_DEVICE_NAME over the identity pick_device gave the CPU. */
static void apply_device_knobs(void) {
    g_device.type = ZE_DEVICE_TYPE_CPU;
    g_device.vendor_id = KBZE_VENDOR_INTEL;
    g_device.ip_version = KBZE_IP_VERSION;
    uint32_t ip;
    if (env_u32("KBZE_DEVICE_IP", &ip)) {                  /* playing an Intel GPU */
        g_device.ip_version = ip;
        g_device.type = ZE_DEVICE_TYPE_GPU;
        g_device.vendor_id = KBZE_VENDOR_INTEL;
    }
    const char *name = getenv("KBZE_DEVICE_NAME");
    if (name && *name) {
        size_t n = strlen(name);
        if (n > sizeof g_device.name - 1) {
            n = sizeof g_device.name - 1;
            while (n > 0 && ((unsigned char)name[n] & 0xc0) == 0x80) n--;   /* not inside a UTF-8 character */
        }
        memcpy(g_device.name, name, n);
        g_device.name[n] = '\0';
    }
}

static ze_result_t ZE_APICALL kb_zeInit(ze_init_flags_t flags) {
    pthread_mutex_lock(&g_lock);
    if (!g_ready && g_init_result == ZE_RESULT_ERROR_UNINITIALIZED) {
        if (flags && !(flags & ZE_INIT_FLAG_GPU_ONLY) && !(flags & ZE_INIT_FLAG_VPU_ONLY)) {
            g_init_result = ZE_RESULT_ERROR_INVALID_ENUMERATION;
        } else if (load_opencl() && pick_device()) {
            const char *v = getenv("KBZE_DRIVER_VERSION");
            g_driver.version = v && *v ? (uint32_t)strtoul(v, NULL, 0) : 0x00010000u;
            uint64_t h = fnv1a(&g_driver.version, sizeof g_driver.version, 0x84222325cbf29ce4ull);
            memcpy(g_driver.uuid, &h, 8);
            memcpy(g_driver.uuid + 8, g_device.uuid, 8);
            apply_device_knobs();
            g_ready = 1;
            g_init_result = ZE_RESULT_SUCCESS;
        }
    }
    ze_result_t r = g_ready ? ZE_RESULT_SUCCESS : ZE_RESULT_ERROR_UNINITIALIZED;
    pthread_mutex_unlock(&g_lock);
    return r;
}

static ze_result_t ZE_APICALL kb_zeDriverGet(uint32_t *pCount, ze_driver_handle_t *phDrivers) {
    READY(); NEED(pCount);
    if (*pCount == 0 || !phDrivers) { *pCount = 1; return ZE_RESULT_SUCCESS; }
    phDrivers[0] = (ze_driver_handle_t)&g_driver;
    *pCount = 1;
    return ZE_RESULT_SUCCESS;
}

static ze_result_t ZE_APICALL kb_zeDriverGetApiVersion(ze_driver_handle_t h, ze_api_version_t *v) {
    NEED_HANDLE(h); NEED(v);
    *v = ZE_API_VERSION_1_4;
    return ZE_RESULT_SUCCESS;
}

static ze_result_t ZE_APICALL kb_zeDriverGetProperties(ze_driver_handle_t h, ze_driver_properties_t *p) {
    NEED_HANDLE(h); NEED(p);
    memcpy(p->uuid.id, g_driver.uuid, sizeof g_driver.uuid);
    p->driverVersion = g_driver.version;
    return ZE_RESULT_SUCCESS;
}

static ze_result_t ZE_APICALL kb_zeDriverGetExtensionProperties(ze_driver_handle_t h, uint32_t *pCount,
                                                                ze_driver_extension_properties_t *p) {
    (void)p; NEED_HANDLE(h); NEED(pCount);
    *pCount = 0;
    return ZE_RESULT_SUCCESS;
}

/* ---- device ------------------------------------------------------------------------------- */
static ze_result_t ZE_APICALL kb_zeDeviceGet(ze_driver_handle_t h, uint32_t *pCount, ze_device_handle_t *ph) {
    NEED_HANDLE(h); NEED(pCount);
    if (*pCount == 0 || !ph) { *pCount = 1; return ZE_RESULT_SUCCESS; }
    ph[0] = (ze_device_handle_t)&g_device;
    *pCount = 1;
    return ZE_RESULT_SUCCESS;
}

static ze_result_t ZE_APICALL kb_zeDeviceGetSubDevices(ze_device_handle_t h, uint32_t *pCount, ze_device_handle_t *ph) {
    (void)ph; NEED_HANDLE(h); NEED(pCount);
    *pCount = 0;
    return ZE_RESULT_SUCCESS;
}

static ze_result_t ZE_APICALL kb_zeDeviceGetProperties(ze_device_handle_t h, ze_device_properties_t *p) {
    NEED_HANDLE(h); NEED(p);
    struct kb_device *d = (struct kb_device *)h;
    cl_uint units = 1, mhz = 0;
    cl_ulong maxalloc = 0;
    cl.GetDeviceInfo(d->device, CL_DEVICE_MAX_COMPUTE_UNITS, sizeof units, &units, NULL);
    cl.GetDeviceInfo(d->device, CL_DEVICE_MAX_CLOCK_FREQUENCY, sizeof mhz, &mhz, NULL);
    cl.GetDeviceInfo(d->device, CL_DEVICE_MAX_MEM_ALLOC_SIZE, sizeof maxalloc, &maxalloc, NULL);
    p->type = d->type;
    p->vendorId = d->vendor_id;
    p->deviceId = 0x0c9u;
    p->flags = ZE_DEVICE_PROPERTY_FLAG_INTEGRATED;
    p->subdeviceId = 0;
    p->coreClockRate = mhz;
    p->maxMemAllocSize = maxalloc;
    p->maxHardwareContexts = 1;
    p->maxCommandQueuePriority = 0;
    p->numThreadsPerEU = 1;
    p->physicalEUSimdWidth = 16;
    p->numEUsPerSubslice = units;
    p->numSubslicesPerSlice = 1;
    p->numSlices = 1;
    p->timerResolution = 1;
    p->timestampValidBits = 64;
    p->kernelTimestampValidBits = 64;
    memcpy(p->uuid.id, d->uuid, sizeof d->uuid);
    snprintf(p->name, sizeof p->name, "%s", d->name);
    for (ze_base_properties_t *ext = p->pNext; ext; ext = ext->pNext)
        if (ext->stype == ZE_STRUCTURE_TYPE_DEVICE_IP_VERSION_EXT)
            ((ze_device_ip_version_ext_t *)ext)->ipVersion = d->ip_version;
    return ZE_RESULT_SUCCESS;
}

static ze_result_t ZE_APICALL kb_zeDeviceGetComputeProperties(ze_device_handle_t h, ze_device_compute_properties_t *p) {
    NEED_HANDLE(h); NEED(p);
    struct kb_device *d = (struct kb_device *)h;
    size_t wg = 1, items[3] = {1, 1, 1};
    cl_ulong local = 0;
    cl.GetDeviceInfo(d->device, CL_DEVICE_MAX_WORK_GROUP_SIZE, sizeof wg, &wg, NULL);
    cl.GetDeviceInfo(d->device, CL_DEVICE_MAX_WORK_ITEM_SIZES, sizeof items, items, NULL);
    cl.GetDeviceInfo(d->device, CL_DEVICE_LOCAL_MEM_SIZE, sizeof local, &local, NULL);
    p->maxTotalGroupSize = (uint32_t)wg;
    p->maxGroupSizeX = (uint32_t)items[0];
    p->maxGroupSizeY = (uint32_t)items[1];
    p->maxGroupSizeZ = (uint32_t)items[2];
    p->maxGroupCountX = p->maxGroupCountY = p->maxGroupCountZ = 0xffffffffu;
    p->maxSharedLocalMemory = (uint32_t)local;
    p->numSubGroupSizes = 1;
    p->subGroupSizes[0] = 16;
    return ZE_RESULT_SUCCESS;
}

static ze_result_t ZE_APICALL kb_zeDeviceGetModuleProperties(ze_device_handle_t h, ze_device_module_properties_t *p) {
    NEED_HANDLE(h); NEED(p);
    p->spirvVersionSupported = ZE_MAKE_VERSION(1, 4);
    p->flags = ZE_DEVICE_MODULE_FLAG_FP16 | ZE_DEVICE_MODULE_FLAG_FP64 | ZE_DEVICE_MODULE_FLAG_INT64_ATOMICS;
    p->fp16flags = p->fp32flags = p->fp64flags = ZE_DEVICE_FP_FLAG_ROUND_TO_NEAREST | ZE_DEVICE_FP_FLAG_FMA;
    p->maxArgumentsSize = 4096;
    p->printfBufferSize = 1 << 20;
    memcpy(p->nativeKernelSupported.id, g_driver.uuid, sizeof p->nativeKernelSupported.id);
    return ZE_RESULT_SUCCESS;
}

static ze_result_t ZE_APICALL kb_zeDeviceGetCommandQueueGroupProperties(ze_device_handle_t h, uint32_t *pCount,
                                                                        ze_command_queue_group_properties_t *p) {
    NEED_HANDLE(h); NEED(pCount);
    if (*pCount == 0 || !p) { *pCount = 1; return ZE_RESULT_SUCCESS; }
    p[0].flags = ZE_COMMAND_QUEUE_GROUP_PROPERTY_FLAG_COMPUTE | ZE_COMMAND_QUEUE_GROUP_PROPERTY_FLAG_COPY;
    p[0].maxMemoryFillPatternSize = 128;
    p[0].numQueues = 1;
    *pCount = 1;
    return ZE_RESULT_SUCCESS;
}

/* ---- context --------------------------------------------------------------------------------- */
static ze_result_t ZE_APICALL kb_zeContextCreate(ze_driver_handle_t h, const ze_context_desc_t *desc,
                                                 ze_context_handle_t *ph) {
    READY(); NEED_HANDLE(h); NEED(desc); NEED(ph);
    struct kb_context *c = calloc(1, sizeof *c);
    if (!c) return ZE_RESULT_ERROR_OUT_OF_HOST_MEMORY;
    cl_int err;
    c->ctx = cl.CreateContext(NULL, 1, &g_device.device, NULL, NULL, &err);
    if (err == CL_SUCCESS) c->queue = cl.CreateCommandQueueWithProperties(c->ctx, g_device.device, NULL, &err);
    if (err != CL_SUCCESS) {
        if (c->ctx) cl.ReleaseContext(c->ctx);
        free(c);
        return cl_to_ze(err);
    }
    *ph = (ze_context_handle_t)c;
    return ZE_RESULT_SUCCESS;
}

static ze_result_t ZE_APICALL kb_zeContextDestroy(ze_context_handle_t h) {
    NEED_HANDLE(h);
    struct kb_context *c = (struct kb_context *)h;
    cl.Finish(c->queue);
    cl.ReleaseCommandQueue(c->queue);
    cl.ReleaseContext(c->ctx);
    free(c);
    return ZE_RESULT_SUCCESS;
}

/* ---- memory ------------------------------------------------------------------------------------ */
static ze_result_t track(void *ptr, size_t size, cl_int err, void **pptr) {
    if (err != CL_SUCCESS || !ptr) return err == CL_SUCCESS ? ZE_RESULT_ERROR_OUT_OF_DEVICE_MEMORY : cl_to_ze(err);
    struct kb_alloc *a = malloc(sizeof *a);
    if (!a) return ZE_RESULT_ERROR_OUT_OF_HOST_MEMORY;
    a->ptr = ptr; a->size = size;
    pthread_mutex_lock(&g_lock);
    a->next = g_allocs; g_allocs = a;
    pthread_mutex_unlock(&g_lock);
    *pptr = ptr;
    return ZE_RESULT_SUCCESS;
}

static int is_usm(const void *p) {
    int found = 0;
    pthread_mutex_lock(&g_lock);
    for (struct kb_alloc *a = g_allocs; a; a = a->next)
        if ((const char *)p >= (const char *)a->ptr && (const char *)p < (const char *)a->ptr + a->size) { found = 1; break; }
    pthread_mutex_unlock(&g_lock);
    return found;
}

static ze_result_t ZE_APICALL kb_zeMemAllocHost(ze_context_handle_t h, const ze_host_mem_alloc_desc_t *desc,
                                                size_t size, size_t alignment, void **pptr) {
    NEED_HANDLE(h); NEED(desc); NEED(pptr);
    if (size == 0) return ZE_RESULT_ERROR_UNSUPPORTED_SIZE;
    if (alignment & (alignment - 1)) return ZE_RESULT_ERROR_UNSUPPORTED_ALIGNMENT;
    cl_int err;
    void *p = cl.HostMemAlloc(((struct kb_context *)h)->ctx, NULL, size, (cl_uint)alignment, &err);
    return track(p, size, err, pptr);
}

static ze_result_t ZE_APICALL kb_zeMemAllocDevice(ze_context_handle_t h, const ze_device_mem_alloc_desc_t *desc,
                                                  size_t size, size_t alignment, ze_device_handle_t dev, void **pptr) {
    NEED_HANDLE(h); NEED_HANDLE(dev); NEED(desc); NEED(pptr);
    if (size == 0) return ZE_RESULT_ERROR_UNSUPPORTED_SIZE;
    if (alignment & (alignment - 1)) return ZE_RESULT_ERROR_UNSUPPORTED_ALIGNMENT;
    cl_int err;
    void *p = cl.DeviceMemAlloc(((struct kb_context *)h)->ctx, g_device.device, NULL, size, (cl_uint)alignment, &err);
    return track(p, size, err, pptr);
}

static ze_result_t ZE_APICALL kb_zeMemAllocShared(ze_context_handle_t h, const ze_device_mem_alloc_desc_t *ddesc,
                                                  const ze_host_mem_alloc_desc_t *hdesc, size_t size, size_t alignment,
                                                  ze_device_handle_t dev, void **pptr) {
    (void)dev; NEED_HANDLE(h); NEED(ddesc); NEED(hdesc); NEED(pptr);
    if (size == 0) return ZE_RESULT_ERROR_UNSUPPORTED_SIZE;
    if (alignment & (alignment - 1)) return ZE_RESULT_ERROR_UNSUPPORTED_ALIGNMENT;
    cl_int err;
    void *p = cl.SharedMemAlloc(((struct kb_context *)h)->ctx, g_device.device, NULL, size, (cl_uint)alignment, &err);
    return track(p, size, err, pptr);
}

static ze_result_t ZE_APICALL kb_zeMemFree(ze_context_handle_t h, void *ptr) {
    NEED_HANDLE(h); NEED(ptr);
    pthread_mutex_lock(&g_lock);
    struct kb_alloc **pp = &g_allocs, *found = NULL;
    for (; *pp; pp = &(*pp)->next)
        if ((*pp)->ptr == ptr) { found = *pp; *pp = found->next; break; }
    pthread_mutex_unlock(&g_lock);
    if (!found) return ZE_RESULT_ERROR_INVALID_ARGUMENT;
    free(found);
    return cl_to_ze(cl.MemBlockingFree(((struct kb_context *)h)->ctx, ptr));
}

/* ---- modules ------------------------------------------------------------------------------------ */
static char *program_log(cl_program prog) {
    size_t n = 0;
    cl.GetProgramBuildInfo(prog, g_device.device, CL_PROGRAM_BUILD_LOG, 0, NULL, &n);
    char *s = calloc(n + 1, 1);
    if (s && n) cl.GetProgramBuildInfo(prog, g_device.device, CL_PROGRAM_BUILD_LOG, n, s, NULL);
    return s;
}

static void set_log(ze_module_build_log_handle_t *ph, char *text) {
    if (!ph) { free(text); return; }
    struct kb_log *l = calloc(1, sizeof *l);
    if (!l) { free(text); *ph = NULL; return; }
    l->text = text ? text : strdup("");
    *ph = (ze_module_build_log_handle_t)l;
}

/* Level Zero build flags -> OpenCL build options: -ze-* flags are the driver's to honour. */
static char *translate_flags(const char *flags, int *large_grf, int *quiet_recompile) {
    size_t n = flags ? strlen(flags) : 0;
    char *out = calloc(n + 32, 1), *copy = strdup(flags ? flags : "");
    if (!out || !copy) { free(out); free(copy); return NULL; }
    *large_grf = 0;
    *quiet_recompile = 0;
    for (char *save = NULL, *tok = strtok_r(copy, " \t", &save); tok; tok = strtok_r(NULL, " \t", &save)) {
        if (!strcmp(tok, LARGE_GRF_FLAG)) { *large_grf = 1; continue; }
        if (!strcmp(tok, NO_RECOMPILE_WARNING_FLAG)) { *quiet_recompile = 1; continue; }
        if (!strcmp(tok, "-ze-opt-disable")) { strcat(out, " -cl-opt-disable"); continue; }
        if (!strncmp(tok, "-ze-", 4)) continue;     /* other -ze- flags tune a GPU back end */
        strcat(out, " ");
        strcat(out, tok);
    }
    free(copy);
    return out;
}

/* "warning\n" + log, or log alone when there is no warning (or no memory for both). */
static char *prefix_log(const char *warning, char *log) {
    if (!warning) return log;
    size_t n = strlen(warning) + 2 + (log ? strlen(log) : 0);
    char *out = malloc(n);
    if (!out) return log;
    snprintf(out, n, "%s\n%s", warning, log ? log : "");
    free(log);
    return out;
}

/* recompiled: a native load that plays NEO's recompile from IR (KBZE_RECOMPILE_FROM_IR) */
static ze_result_t finish_module(struct kb_context *c, cl_program prog, const char *flags, int recompiled,
                                 ze_module_handle_t *ph, ze_module_build_log_handle_t *plog) {
    int large = 0, quiet = 0;
    char *opts = translate_flags(flags, &large, &quiet);
    if (!opts) { cl.ReleaseProgram(prog); return ZE_RESULT_ERROR_OUT_OF_HOST_MEMORY; }
    cl_int err = cl.BuildProgram(prog, 1, &g_device.device, opts, NULL, NULL);
    free(opts);
    set_log(plog, prefix_log(recompiled && !quiet ? RECOMPILED_FROM_IR_WARNING : NULL, program_log(prog)));
    if (err != CL_SUCCESS) {
        cl.ReleaseProgram(prog);
        return err == CL_INVALID_BINARY ? ZE_RESULT_ERROR_INVALID_NATIVE_BINARY : ZE_RESULT_ERROR_MODULE_BUILD_FAILURE;
    }
    struct kb_module *m = calloc(1, sizeof *m);
    if (!m) { cl.ReleaseProgram(prog); return ZE_RESULT_ERROR_OUT_OF_HOST_MEMORY; }
    m->ctx = c; m->prog = prog; m->large_grf = large;
    *ph = (ze_module_handle_t)m;
    return ZE_RESULT_SUCCESS;
}

/* e_machine of a little-endian ELF (e_ident[EI_DATA] == ELFDATA2LSB), or -1 for anything else. */
static int elf_machine(const uint8_t *p, size_t n) {
    if (n < 20 || memcmp(p, "\x7f" "ELF", 4) || p[5] != 1) return -1;
    return p[18] | p[19] << 8;
}

/* The payload of a native binary is handed to clCreateProgramWithBinary only when it looks like
 * what the CPU runtime made: a 64-bit little-endian x86-64 ELF. The header check already ties it
 * to this driver and device; this keeps forged or corrupt payloads (a GPU zebin, random bytes)
 * away from the runtime, which need not survive them. Returns NULL when acceptable. */
static const char *native_payload_problem(const uint8_t *p, size_t n) {
    int machine = elf_machine(p, n);
    if (machine == (int)ELF_EM_INTELGT) return "the payload is an Intel GPU binary (ELF e_machine 205), not a CPU one";
    if (machine < 0 || n < ELF64_EHDR_SIZE || p[4] != 2) return "the payload is not a 64-bit little-endian ELF";
    if (machine != (int)ELF_EM_X86_64) return "the payload is an ELF for another machine than x86-64";
    uint64_t phoff, shoff;
    uint16_t phentsize, phnum, shentsize, shnum;
    memcpy(&phoff, p + 32, 8); memcpy(&shoff, p + 40, 8);
    memcpy(&phentsize, p + 54, 2); memcpy(&phnum, p + 56, 2); memcpy(&shentsize, p + 58, 2); memcpy(&shnum, p + 60, 2);
    if ((phnum && (phoff > n || (uint64_t)phentsize * phnum > n - phoff)) ||
        (shnum && (shoff > n || (uint64_t)shentsize * shnum > n - shoff)))
        return "the payload is a truncated or corrupt ELF (its header tables lie outside it)";
    return NULL;
}

static ze_result_t ZE_APICALL kb_zeModuleCreate(ze_context_handle_t hc, ze_device_handle_t hd, const ze_module_desc_t *desc,
                                                ze_module_handle_t *ph, ze_module_build_log_handle_t *plog) {
    NEED_HANDLE(hc); NEED_HANDLE(hd); NEED(desc); NEED(ph);
    if (plog) *plog = NULL;
    if (!desc->pInputModule || desc->inputSize == 0) return ZE_RESULT_ERROR_INVALID_NULL_POINTER;
    if (desc->pConstants && desc->pConstants->numConstants) return ZE_RESULT_ERROR_UNSUPPORTED_FEATURE;
    struct kb_context *c = (struct kb_context *)hc;
    cl_int err = CL_SUCCESS;
    cl_program prog = NULL;
    if (desc->format == ZE_MODULE_FORMAT_IL_SPIRV) {
        prog = cl.CreateProgramWithIL(c->ctx, desc->pInputModule, desc->inputSize, &err);
        if (err != CL_SUCCESS) { set_log(plog, strdup("the SPIR-V module was rejected")); return ZE_RESULT_ERROR_INVALID_ARGUMENT; }
    } else if (desc->format == ZE_MODULE_FORMAT_NATIVE) {
        const uint8_t *in = desc->pInputModule;
        if (getenv("KBZE_CRASH_ON_NATIVE") && *getenv("KBZE_CRASH_ON_NATIVE")) {
            uint64_t sum = 0;
            int own = 0;
            if (desc->inputSize >= NATIVE_HEADER) memcpy(&sum, in + 40, 8);
            pthread_mutex_lock(&g_handed_lock);
            for (size_t i = 0; i < g_handed_n; i++) own |= g_handed[i] == sum;
            pthread_mutex_unlock(&g_handed_lock);
            if (!own) abort();
        }
        uint32_t format, version;
        uint64_t size, checksum;
        if (desc->inputSize < NATIVE_HEADER || memcmp(in, NATIVE_MAGIC, 8)) {
            set_log(plog, strdup(elf_machine(in, desc->inputSize) == (int)ELF_EM_INTELGT
                                 ? "not a native binary of this driver: an Intel GPU binary (ELF e_machine 205)"
                                 : "not a native binary of this driver"));
            return ZE_RESULT_ERROR_INVALID_NATIVE_BINARY;
        }
        memcpy(&format, in + 8, 4); memcpy(&version, in + 12, 4); memcpy(&size, in + 32, 8); memcpy(&checksum, in + 40, 8);
        if (format != NATIVE_FORMAT || version != g_driver.version || memcmp(in + 16, g_device.uuid, 16) ||
            size != desc->inputSize - NATIVE_HEADER) {
            set_log(plog, strdup("native binary made by another driver version or for another device"));
            return ZE_RESULT_ERROR_INVALID_NATIVE_BINARY;
        }
        const unsigned char *bin = in + NATIVE_HEADER;
        size_t bin_size = (size_t)size;
        const char *problem = fnv1a(bin, bin_size, NATIVE_CHECKSUM_SEED) != checksum
                              ? "the native binary is corrupt (its checksum does not match)"
                              : native_payload_problem(bin, bin_size);
        if (problem) {
            set_log(plog, strdup(problem));
            return ZE_RESULT_ERROR_INVALID_NATIVE_BINARY;
        }
        cl_int status = CL_SUCCESS;
        prog = cl.CreateProgramWithBinary(c->ctx, 1, &g_device.device, &bin_size, &bin, &status, &err);
        if (err != CL_SUCCESS || status != CL_SUCCESS) {
            set_log(plog, strdup("the OpenCL runtime rejected the binary"));
            if (prog) cl.ReleaseProgram(prog);
            return ZE_RESULT_ERROR_INVALID_NATIVE_BINARY;
        }
    } else {
        return ZE_RESULT_ERROR_INVALID_ENUMERATION;
    }
    const char *recompile = getenv("KBZE_RECOMPILE_FROM_IR");
    return finish_module(c, prog, desc->pBuildFlags,
                         desc->format == ZE_MODULE_FORMAT_NATIVE && recompile && *recompile, ph, plog);
}

static ze_result_t ZE_APICALL kb_zeModuleDestroy(ze_module_handle_t h) {
    NEED_HANDLE(h);
    struct kb_module *m = (struct kb_module *)h;
    cl.ReleaseProgram(m->prog);
    free(m->native); free(m->names_buf); free(m->names); free(m);
    return ZE_RESULT_SUCCESS;
}

static ze_result_t ZE_APICALL kb_zeModuleGetNativeBinary(ze_module_handle_t h, size_t *pSize, uint8_t *out) {
    NEED_HANDLE(h); NEED(pSize);
    struct kb_module *m = (struct kb_module *)h;
    if (!m->native) {
        size_t n = 0;
        if (cl.GetProgramInfo(m->prog, CL_PROGRAM_BINARY_SIZES, sizeof n, &n, NULL) != CL_SUCCESS || !n)
            return ZE_RESULT_ERROR_UNKNOWN;
        uint8_t *buf = malloc(NATIVE_HEADER + n);
        if (!buf) return ZE_RESULT_ERROR_OUT_OF_HOST_MEMORY;
        unsigned char *bin = buf + NATIVE_HEADER;
        if (cl.GetProgramInfo(m->prog, CL_PROGRAM_BINARIES, sizeof bin, &bin, NULL) != CL_SUCCESS) {
            free(buf);
            return ZE_RESULT_ERROR_UNKNOWN;
        }
        uint32_t format = NATIVE_FORMAT;
        uint64_t size = n, checksum = fnv1a(bin, n, NATIVE_CHECKSUM_SEED);
        memcpy(buf, NATIVE_MAGIC, 8); memcpy(buf + 8, &format, 4); memcpy(buf + 12, &g_driver.version, 4);
        memcpy(buf + 16, g_device.uuid, 16); memcpy(buf + 32, &size, 8); memcpy(buf + 40, &checksum, 8);
        m->native = buf;
        m->native_size = NATIVE_HEADER + n;
        pthread_mutex_lock(&g_handed_lock);            /* remembered for KBZE_CRASH_ON_NATIVE */
        if (g_handed_n < sizeof g_handed / sizeof g_handed[0]) g_handed[g_handed_n++] = checksum;
        pthread_mutex_unlock(&g_handed_lock);
    }
    if (!out) { *pSize = m->native_size; return ZE_RESULT_SUCCESS; }
    if (*pSize < m->native_size) return ZE_RESULT_ERROR_INVALID_SIZE;
    memcpy(out, m->native, m->native_size);
    *pSize = m->native_size;
    return ZE_RESULT_SUCCESS;
}

static ze_result_t ZE_APICALL kb_zeModuleGetKernelNames(ze_module_handle_t h, uint32_t *pCount, const char **pNames) {
    NEED_HANDLE(h); NEED(pCount);
    struct kb_module *m = (struct kb_module *)h;
    if (!m->names) {
        size_t n = 0;
        cl.GetProgramInfo(m->prog, CL_PROGRAM_KERNEL_NAMES, 0, NULL, &n);
        m->names_buf = calloc(n + 1, 1);
        if (!m->names_buf) return ZE_RESULT_ERROR_OUT_OF_HOST_MEMORY;
        cl.GetProgramInfo(m->prog, CL_PROGRAM_KERNEL_NAMES, n, m->names_buf, NULL);
        uint32_t count = m->names_buf[0] ? 1 : 0;
        for (char *c = m->names_buf; *c; c++) count += *c == ';';
        m->names = calloc(count ? count : 1, sizeof *m->names);
        if (!m->names) return ZE_RESULT_ERROR_OUT_OF_HOST_MEMORY;
        uint32_t i = 0;
        for (char *save = NULL, *t = strtok_r(m->names_buf, ";", &save); t && i < count; t = strtok_r(NULL, ";", &save))
            m->names[i++] = t;
        m->num_names = i;
    }
    if (*pCount == 0 || !pNames) { *pCount = m->num_names; return ZE_RESULT_SUCCESS; }
    uint32_t n = *pCount < m->num_names ? *pCount : m->num_names;
    for (uint32_t i = 0; i < n; i++) pNames[i] = m->names[i];
    *pCount = n;
    return ZE_RESULT_SUCCESS;
}

static ze_result_t ZE_APICALL kb_zeModuleBuildLogDestroy(ze_module_build_log_handle_t h) {
    NEED_HANDLE(h);
    struct kb_log *l = (struct kb_log *)h;
    free(l->text); free(l);
    return ZE_RESULT_SUCCESS;
}

static ze_result_t ZE_APICALL kb_zeModuleBuildLogGetString(ze_module_build_log_handle_t h, size_t *pSize, char *out) {
    NEED_HANDLE(h); NEED(pSize);
    struct kb_log *l = (struct kb_log *)h;
    size_t need = strlen(l->text) + 1;
    if (!out) { *pSize = need; return ZE_RESULT_SUCCESS; }
    if (*pSize < need) return ZE_RESULT_ERROR_INVALID_SIZE;
    memcpy(out, l->text, need);
    *pSize = need;
    return ZE_RESULT_SUCCESS;
}

/* ---- kernels ------------------------------------------------------------------------------------ */
static ze_result_t ZE_APICALL kb_zeKernelCreate(ze_module_handle_t hm, const ze_kernel_desc_t *desc, ze_kernel_handle_t *ph) {
    NEED_HANDLE(hm); NEED(desc); NEED(ph); NEED(desc->pKernelName);
    struct kb_module *m = (struct kb_module *)hm;
    cl_int err;
    cl_kernel k = cl.CreateKernel(m->prog, desc->pKernelName, &err);
    if (err != CL_SUCCESS) return err == CL_INVALID_KERNEL_NAME ? ZE_RESULT_ERROR_INVALID_KERNEL_NAME : cl_to_ze(err);
    struct kb_kernel *kk = calloc(1, sizeof *kk);
    if (!kk) { cl.ReleaseKernel(k); return ZE_RESULT_ERROR_OUT_OF_HOST_MEMORY; }
    kk->module = m; kk->k = k; kk->group[0] = kk->group[1] = kk->group[2] = 1;
    kk->name = strdup(desc->pKernelName);
    cl.GetKernelInfo(k, CL_KERNEL_NUM_ARGS, sizeof kk->num_args, &kk->num_args, NULL);
    *ph = (ze_kernel_handle_t)kk;
    return ZE_RESULT_SUCCESS;
}

static ze_result_t ZE_APICALL kb_zeKernelDestroy(ze_kernel_handle_t h) {
    NEED_HANDLE(h);
    struct kb_kernel *k = (struct kb_kernel *)h;
    cl.ReleaseKernel(k->k);
    free(k->name); free(k);
    return ZE_RESULT_SUCCESS;
}

static ze_result_t ZE_APICALL kb_zeKernelSetGroupSize(ze_kernel_handle_t h, uint32_t x, uint32_t y, uint32_t z) {
    NEED_HANDLE(h);
    if (!x || !y || !z) return ZE_RESULT_ERROR_INVALID_GROUP_SIZE_DIMENSION;
    size_t wg = 0;
    struct kb_kernel *k = (struct kb_kernel *)h;
    cl.GetKernelWorkGroupInfo(k->k, g_device.device, CL_KERNEL_WORK_GROUP_SIZE, sizeof wg, &wg, NULL);
    if (wg && (size_t)x * y * z > wg) return ZE_RESULT_ERROR_INVALID_GROUP_SIZE_DIMENSION;
    k->group[0] = x; k->group[1] = y; k->group[2] = z;
    return ZE_RESULT_SUCCESS;
}

static ze_result_t ZE_APICALL kb_zeKernelSuggestGroupSize(ze_kernel_handle_t h, uint32_t gx, uint32_t gy, uint32_t gz,
                                                          uint32_t *x, uint32_t *y, uint32_t *z) {
    NEED_HANDLE(h); NEED(x); NEED(y); NEED(z);
    uint32_t want[3] = {gx, gy, gz}, out[3] = {1, 1, 1};
    size_t budget = 0;
    cl.GetKernelWorkGroupInfo(((struct kb_kernel *)h)->k, g_device.device, CL_KERNEL_WORK_GROUP_SIZE, sizeof budget, &budget, NULL);
    if (!budget) budget = 1;
    for (int d = 0; d < 3; d++) {                 /* largest power of two dividing each size, within budget */
        while (want[d] && want[d] % (out[d] * 2) == 0 && out[d] * 2 <= budget) out[d] *= 2;
        budget /= out[d];
    }
    *x = out[0]; *y = out[1]; *z = out[2];
    return ZE_RESULT_SUCCESS;
}

static ze_result_t ZE_APICALL kb_zeKernelSetArgumentValue(ze_kernel_handle_t h, uint32_t index, size_t size, const void *value) {
    NEED_HANDLE(h);
    struct kb_kernel *k = (struct kb_kernel *)h;
    if (index >= k->num_args) return ZE_RESULT_ERROR_INVALID_KERNEL_ARGUMENT_INDEX;
    cl_int err;
    if (!value) {
        err = cl.SetKernelArg(k->k, index, size, NULL);          /* local memory of `size` bytes */
    } else {
        /* A pointer argument is recognised by its value: the address of a live allocation
         * (or NULL). A real driver knows the argument kinds from the kernel's metadata. */
        int pointer = 0;
        if (size == sizeof(void *)) {
            void *ptr;
            memcpy(&ptr, value, sizeof ptr);
            pointer = ptr == NULL || is_usm(ptr);
        }
        if (pointer) {
            void *ptr;
            memcpy(&ptr, value, sizeof ptr);
            err = cl.SetKernelArgMemPointer(k->k, index, ptr);
            if (err != CL_SUCCESS) err = cl.SetKernelArg(k->k, index, size, value);   /* an 8-byte scalar after all */
        } else {
            err = cl.SetKernelArg(k->k, index, size, value);
        }
    }
    return err == CL_INVALID_ARG_SIZE ? ZE_RESULT_ERROR_INVALID_KERNEL_ARGUMENT_SIZE : cl_to_ze(err);
}

static ze_result_t ZE_APICALL kb_zeKernelGetProperties(ze_kernel_handle_t h, ze_kernel_properties_t *p) {
    NEED_HANDLE(h); NEED(p);
    struct kb_kernel *k = (struct kb_kernel *)h;
    size_t req[3] = {0, 0, 0};
    cl_ulong local = 0, priv = 0;
    cl.GetKernelWorkGroupInfo(k->k, g_device.device, CL_KERNEL_COMPILE_WORK_GROUP_SIZE, sizeof req, req, NULL);
    cl.GetKernelWorkGroupInfo(k->k, g_device.device, CL_KERNEL_LOCAL_MEM_SIZE, sizeof local, &local, NULL);
    cl.GetKernelWorkGroupInfo(k->k, g_device.device, CL_KERNEL_PRIVATE_MEM_SIZE, sizeof priv, &priv, NULL);
    p->numKernelArgs = k->num_args;
    p->requiredGroupSizeX = (uint32_t)req[0];
    p->requiredGroupSizeY = (uint32_t)req[1];
    p->requiredGroupSizeZ = (uint32_t)req[2];
    p->requiredNumSubGroups = 0;
    p->requiredSubgroupSize = 0;
    p->maxSubgroupSize = 16;
    p->maxNumSubgroups = 64;
    p->localMemSize = (uint32_t)local;
    p->privateMemSize = (uint32_t)priv;
    const char *spill = getenv("KBZE_SPILL_BYTES");
    p->spillMemSize = (!k->module->large_grf && spill) ? (uint32_t)strtoul(spill, NULL, 0) : 0;
    memset(&p->uuid, 0, sizeof p->uuid);
    return ZE_RESULT_SUCCESS;
}

static ze_result_t ZE_APICALL kb_zeKernelGetName(ze_kernel_handle_t h, size_t *pSize, char *name) {
    NEED_HANDLE(h); NEED(pSize);
    struct kb_kernel *k = (struct kb_kernel *)h;
    size_t need = strlen(k->name) + 1;
    if (!name) { *pSize = need; return ZE_RESULT_SUCCESS; }
    if (*pSize < need) return ZE_RESULT_ERROR_INVALID_SIZE;
    memcpy(name, k->name, need);
    return ZE_RESULT_SUCCESS;
}

/* ---- immediate command lists and events --------------------------------------------------------- */
static ze_result_t ZE_APICALL kb_zeCommandListCreateImmediate(ze_context_handle_t hc, ze_device_handle_t hd,
                                                              const ze_command_queue_desc_t *desc, ze_command_list_handle_t *ph) {
    NEED_HANDLE(hc); NEED_HANDLE(hd); NEED(desc); NEED(ph);
    if (desc->ordinal != 0) return ZE_RESULT_ERROR_INVALID_ARGUMENT;
    struct kb_cmdlist *l = calloc(1, sizeof *l);
    if (!l) return ZE_RESULT_ERROR_OUT_OF_HOST_MEMORY;
    l->ctx = (struct kb_context *)hc;
    *ph = (ze_command_list_handle_t)l;
    return ZE_RESULT_SUCCESS;
}

static ze_result_t ZE_APICALL kb_zeCommandListDestroy(ze_command_list_handle_t h) {
    NEED_HANDLE(h);
    struct kb_cmdlist *l = (struct kb_cmdlist *)h;
    cl.Finish(l->ctx->queue);
    free(l);
    return ZE_RESULT_SUCCESS;
}

static ze_result_t wait_and_signal(ze_result_t r, ze_event_handle_t signal) {
    if (r == ZE_RESULT_SUCCESS && signal) ((struct kb_event *)signal)->signalled = 1;
    return r;
}

static ze_result_t check_waits(uint32_t n, ze_event_handle_t *waits) {
    if (n && !waits) return ZE_RESULT_ERROR_INVALID_SIZE;
    for (uint32_t i = 0; i < n; i++) {
        if (!waits[i]) return ZE_RESULT_ERROR_INVALID_NULL_HANDLE;
        /* synchronous lists: an unsignalled wait could only be signalled by the host later */
        if (!((struct kb_event *)waits[i])->signalled) return ZE_RESULT_ERROR_NOT_AVAILABLE;
    }
    return ZE_RESULT_SUCCESS;
}

static ze_result_t ZE_APICALL kb_zeCommandListAppendLaunchKernel(ze_command_list_handle_t h, ze_kernel_handle_t hk,
                                                                 const ze_group_count_t *groups, ze_event_handle_t signal,
                                                                 uint32_t nwait, ze_event_handle_t *waits) {
    NEED_HANDLE(h); NEED_HANDLE(hk); NEED(groups);
    ze_result_t r = check_waits(nwait, waits);
    if (r != ZE_RESULT_SUCCESS) return r;
    struct kb_cmdlist *l = (struct kb_cmdlist *)h;
    struct kb_kernel *k = (struct kb_kernel *)hk;
    size_t local[3] = {k->group[0], k->group[1], k->group[2]};
    size_t global[3] = {(size_t)groups->groupCountX * local[0], (size_t)groups->groupCountY * local[1],
                        (size_t)groups->groupCountZ * local[2]};
    if (!global[0] || !global[1] || !global[2]) return wait_and_signal(ZE_RESULT_SUCCESS, signal);
    cl_int err = cl.EnqueueNDRangeKernel(l->ctx->queue, k->k, 3, NULL, global, local, 0, NULL, NULL);
    if (err == CL_SUCCESS) err = cl.Finish(l->ctx->queue);
    return wait_and_signal(cl_to_ze(err), signal);
}

static ze_result_t ZE_APICALL kb_zeCommandListAppendMemoryCopy(ze_command_list_handle_t h, void *dst, const void *src,
                                                               size_t size, ze_event_handle_t signal, uint32_t nwait,
                                                               ze_event_handle_t *waits) {
    NEED_HANDLE(h); NEED(dst); NEED(src);
    ze_result_t r = check_waits(nwait, waits);
    if (r != ZE_RESULT_SUCCESS) return r;
    struct kb_cmdlist *l = (struct kb_cmdlist *)h;
    cl_int err = cl.EnqueueMemcpy(l->ctx->queue, CL_TRUE, dst, src, size, 0, NULL, NULL);
    return wait_and_signal(cl_to_ze(err), signal);
}

static ze_result_t ZE_APICALL kb_zeCommandListAppendBarrier(ze_command_list_handle_t h, ze_event_handle_t signal,
                                                            uint32_t nwait, ze_event_handle_t *waits) {
    NEED_HANDLE(h);
    ze_result_t r = check_waits(nwait, waits);
    if (r != ZE_RESULT_SUCCESS) return r;
    return wait_and_signal(cl_to_ze(cl.Finish(((struct kb_cmdlist *)h)->ctx->queue)), signal);
}

static ze_result_t ZE_APICALL kb_zeEventPoolCreate(ze_context_handle_t hc, const ze_event_pool_desc_t *desc, uint32_t ndev,
                                                   ze_device_handle_t *devs, ze_event_pool_handle_t *ph) {
    (void)ndev; (void)devs; NEED_HANDLE(hc); NEED(desc); NEED(ph);
    if (!desc->count) return ZE_RESULT_ERROR_INVALID_SIZE;
    struct kb_event_pool *p = calloc(1, sizeof *p);
    if (!p) return ZE_RESULT_ERROR_OUT_OF_HOST_MEMORY;
    p->events = calloc(desc->count, sizeof *p->events);
    if (!p->events) { free(p); return ZE_RESULT_ERROR_OUT_OF_HOST_MEMORY; }
    p->count = desc->count;
    *ph = (ze_event_pool_handle_t)p;
    return ZE_RESULT_SUCCESS;
}

static ze_result_t ZE_APICALL kb_zeEventPoolDestroy(ze_event_pool_handle_t h) {
    NEED_HANDLE(h);
    struct kb_event_pool *p = (struct kb_event_pool *)h;
    free(p->events); free(p);
    return ZE_RESULT_SUCCESS;
}

static ze_result_t ZE_APICALL kb_zeEventCreate(ze_event_pool_handle_t hp, const ze_event_desc_t *desc, ze_event_handle_t *ph) {
    NEED_HANDLE(hp); NEED(desc); NEED(ph);
    struct kb_event_pool *p = (struct kb_event_pool *)hp;
    if (desc->index >= p->count) return ZE_RESULT_ERROR_INVALID_ARGUMENT;
    p->events[desc->index].signalled = 0;
    *ph = (ze_event_handle_t)&p->events[desc->index];
    return ZE_RESULT_SUCCESS;
}

static ze_result_t ZE_APICALL kb_zeEventDestroy(ze_event_handle_t h) { NEED_HANDLE(h); return ZE_RESULT_SUCCESS; }

static ze_result_t ZE_APICALL kb_zeEventHostSignal(ze_event_handle_t h) {
    NEED_HANDLE(h);
    ((struct kb_event *)h)->signalled = 1;
    return ZE_RESULT_SUCCESS;
}

static ze_result_t ZE_APICALL kb_zeEventHostSynchronize(ze_event_handle_t h, uint64_t timeout) {
    (void)timeout; NEED_HANDLE(h);
    /* all work is complete when an append returns: an unsignalled event stays unsignalled */
    return ((struct kb_event *)h)->signalled ? ZE_RESULT_SUCCESS : ZE_RESULT_NOT_READY;
}

static ze_result_t ZE_APICALL kb_zeEventQueryStatus(ze_event_handle_t h) { return kb_zeEventHostSynchronize(h, 0); }

static ze_result_t ZE_APICALL kb_zeEventHostReset(ze_event_handle_t h) {
    NEED_HANDLE(h);
    ((struct kb_event *)h)->signalled = 0;
    return ZE_RESULT_SUCCESS;
}

/* ---- the tables the loader asks for ------------------------------------------------------------- */
#define ZE_EXPORT __attribute__((visibility("default"))) ze_result_t ZE_APICALL
#define TABLE(fn, type, body) \
    ZE_EXPORT fn(ze_api_version_t version, type *t) { \
        (void)version; if (!t) return ZE_RESULT_ERROR_INVALID_NULL_POINTER; memset(t, 0, sizeof *t); body; \
        return ZE_RESULT_SUCCESS; }

TABLE(zeGetGlobalProcAddrTable, ze_global_dditable_t, t->pfnInit = kb_zeInit)
TABLE(zeGetDriverProcAddrTable, ze_driver_dditable_t,
      t->pfnGet = kb_zeDriverGet; t->pfnGetApiVersion = kb_zeDriverGetApiVersion;
      t->pfnGetProperties = kb_zeDriverGetProperties; t->pfnGetExtensionProperties = kb_zeDriverGetExtensionProperties)
TABLE(zeGetDeviceProcAddrTable, ze_device_dditable_t,
      t->pfnGet = kb_zeDeviceGet; t->pfnGetSubDevices = kb_zeDeviceGetSubDevices;
      t->pfnGetProperties = kb_zeDeviceGetProperties; t->pfnGetComputeProperties = kb_zeDeviceGetComputeProperties;
      t->pfnGetModuleProperties = kb_zeDeviceGetModuleProperties;
      t->pfnGetCommandQueueGroupProperties = kb_zeDeviceGetCommandQueueGroupProperties)
TABLE(zeGetContextProcAddrTable, ze_context_dditable_t, t->pfnCreate = kb_zeContextCreate; t->pfnDestroy = kb_zeContextDestroy)
TABLE(zeGetCommandListProcAddrTable, ze_command_list_dditable_t,
      t->pfnCreateImmediate = kb_zeCommandListCreateImmediate; t->pfnDestroy = kb_zeCommandListDestroy;
      t->pfnAppendLaunchKernel = kb_zeCommandListAppendLaunchKernel; t->pfnAppendMemoryCopy = kb_zeCommandListAppendMemoryCopy;
      t->pfnAppendBarrier = kb_zeCommandListAppendBarrier)
TABLE(zeGetEventPoolProcAddrTable, ze_event_pool_dditable_t, t->pfnCreate = kb_zeEventPoolCreate; t->pfnDestroy = kb_zeEventPoolDestroy)
TABLE(zeGetEventProcAddrTable, ze_event_dditable_t,
      t->pfnCreate = kb_zeEventCreate; t->pfnDestroy = kb_zeEventDestroy; t->pfnHostSignal = kb_zeEventHostSignal;
      t->pfnHostSynchronize = kb_zeEventHostSynchronize; t->pfnQueryStatus = kb_zeEventQueryStatus;
      t->pfnHostReset = kb_zeEventHostReset)
TABLE(zeGetModuleProcAddrTable, ze_module_dditable_t,
      t->pfnCreate = kb_zeModuleCreate; t->pfnDestroy = kb_zeModuleDestroy;
      t->pfnGetNativeBinary = kb_zeModuleGetNativeBinary; t->pfnGetKernelNames = kb_zeModuleGetKernelNames)
TABLE(zeGetModuleBuildLogProcAddrTable, ze_module_build_log_dditable_t,
      t->pfnDestroy = kb_zeModuleBuildLogDestroy; t->pfnGetString = kb_zeModuleBuildLogGetString)
TABLE(zeGetKernelProcAddrTable, ze_kernel_dditable_t,
      t->pfnCreate = kb_zeKernelCreate; t->pfnDestroy = kb_zeKernelDestroy; t->pfnSetGroupSize = kb_zeKernelSetGroupSize;
      t->pfnSuggestGroupSize = kb_zeKernelSuggestGroupSize; t->pfnSetArgumentValue = kb_zeKernelSetArgumentValue;
      t->pfnGetProperties = kb_zeKernelGetProperties; t->pfnGetName = kb_zeKernelGetName)
TABLE(zeGetMemProcAddrTable, ze_mem_dditable_t,
      t->pfnAllocShared = kb_zeMemAllocShared; t->pfnAllocDevice = kb_zeMemAllocDevice;
      t->pfnAllocHost = kb_zeMemAllocHost; t->pfnFree = kb_zeMemFree)

/* Tables this driver leaves empty: the loader requires that they exist. */
TABLE(zeGetDeviceExpProcAddrTable, ze_device_exp_dditable_t, )
TABLE(zeGetCommandQueueProcAddrTable, ze_command_queue_dditable_t, )
TABLE(zeGetImageProcAddrTable, ze_image_dditable_t, )
TABLE(zeGetImageExpProcAddrTable, ze_image_exp_dditable_t, )
TABLE(zeGetFenceProcAddrTable, ze_fence_dditable_t, )
TABLE(zeGetEventExpProcAddrTable, ze_event_exp_dditable_t, )
TABLE(zeGetKernelExpProcAddrTable, ze_kernel_exp_dditable_t, )
TABLE(zeGetSamplerProcAddrTable, ze_sampler_dditable_t, )
TABLE(zeGetPhysicalMemProcAddrTable, ze_physical_mem_dditable_t, )
TABLE(zeGetVirtualMemProcAddrTable, ze_virtual_mem_dditable_t, )
TABLE(zeGetFabricVertexExpProcAddrTable, ze_fabric_vertex_exp_dditable_t, )
TABLE(zeGetFabricEdgeExpProcAddrTable, ze_fabric_edge_exp_dditable_t, )
TABLE(zetGetDeviceProcAddrTable, zet_device_dditable_t, )
TABLE(zetGetContextProcAddrTable, zet_context_dditable_t, )
TABLE(zetGetCommandListProcAddrTable, zet_command_list_dditable_t, )
TABLE(zetGetModuleProcAddrTable, zet_module_dditable_t, )
TABLE(zetGetKernelProcAddrTable, zet_kernel_dditable_t, )
TABLE(zetGetMetricGroupProcAddrTable, zet_metric_group_dditable_t, )
TABLE(zetGetMetricGroupExpProcAddrTable, zet_metric_group_exp_dditable_t, )
TABLE(zetGetMetricProcAddrTable, zet_metric_dditable_t, )
TABLE(zetGetMetricStreamerProcAddrTable, zet_metric_streamer_dditable_t, )
TABLE(zetGetMetricQueryPoolProcAddrTable, zet_metric_query_pool_dditable_t, )
TABLE(zetGetMetricQueryProcAddrTable, zet_metric_query_dditable_t, )
TABLE(zetGetTracerExpProcAddrTable, zet_tracer_exp_dditable_t, )
TABLE(zetGetDebugProcAddrTable, zet_debug_dditable_t, )
TABLE(zesGetDriverProcAddrTable, zes_driver_dditable_t, )
TABLE(zesGetDeviceProcAddrTable, zes_device_dditable_t, )
TABLE(zesGetSchedulerProcAddrTable, zes_scheduler_dditable_t, )
TABLE(zesGetPerformanceFactorProcAddrTable, zes_performance_factor_dditable_t, )
TABLE(zesGetPowerProcAddrTable, zes_power_dditable_t, )
TABLE(zesGetFrequencyProcAddrTable, zes_frequency_dditable_t, )
TABLE(zesGetEngineProcAddrTable, zes_engine_dditable_t, )
TABLE(zesGetStandbyProcAddrTable, zes_standby_dditable_t, )
TABLE(zesGetFirmwareProcAddrTable, zes_firmware_dditable_t, )
TABLE(zesGetMemoryProcAddrTable, zes_memory_dditable_t, )
TABLE(zesGetFabricPortProcAddrTable, zes_fabric_port_dditable_t, )
TABLE(zesGetTemperatureProcAddrTable, zes_temperature_dditable_t, )
TABLE(zesGetPsuProcAddrTable, zes_psu_dditable_t, )
TABLE(zesGetFanProcAddrTable, zes_fan_dditable_t, )
TABLE(zesGetLedProcAddrTable, zes_led_dditable_t, )
TABLE(zesGetRasProcAddrTable, zes_ras_dditable_t, )
TABLE(zesGetDiagnosticsProcAddrTable, zes_diagnostics_dditable_t, )
