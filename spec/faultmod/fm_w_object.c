/* Object management: the calls whose lengths and counts may be
 * misreported (C_GetAttributeValue, C_FindObjects; see fm_misreport.h). */
#include "fm_call.h"
#include "fm_wrappers.h"

#include <stdlib.h>

FM_SESSION_WRAPPER(C_CreateObject, (CK_SESSION_HANDLE hSession, CK_ATTRIBUTE_PTR pTemplate,
                                    CK_ULONG ulCount, CK_OBJECT_HANDLE_PTR phObject),
                   (real, pTemplate, ulCount, phObject))

FM_SESSION_WRAPPER(C_CopyObject, (CK_SESSION_HANDLE hSession, CK_OBJECT_HANDLE hObject,
                                  CK_ATTRIBUTE_PTR pTemplate, CK_ULONG ulCount,
                                  CK_OBJECT_HANDLE_PTR phNewObject),
                   (real, hObject, pTemplate, ulCount, phNewObject))

FM_SESSION_WRAPPER(C_DestroyObject, (CK_SESSION_HANDLE hSession, CK_OBJECT_HANDLE hObject),
                   (real, hObject))

FM_SESSION_WRAPPER(C_GetObjectSize, (CK_SESSION_HANDLE hSession, CK_OBJECT_HANDLE hObject,
                                     CK_ULONG_PTR pulSize),
                   (real, hObject, pulSize))

/* C_GetAttributeValue forwarded; with JWKE_FAULT_LENGTHS rules, the lengths
 * as they misreport them (fm_misreport_attributes needs the buffer sizes the
 * caller gave, which the real call overwrites). */
static CK_RV get_attributes(fm_call *c, CK_SESSION_HANDLE real, CK_OBJECT_HANDLE hObject,
                            CK_ATTRIBUTE_PTR pTemplate, CK_ULONG ulCount)
{
    if (!c->nlengths || !pTemplate || !ulCount)
        return c->R->C_GetAttributeValue(real, hObject, pTemplate, ulCount);
    CK_ULONG *given = malloc(ulCount * sizeof *given);
    if (!given)
        return CKR_HOST_MEMORY;
    for (CK_ULONG i = 0; i < ulCount; i++)
        given[i] = pTemplate[i].ulValueLen;
    CK_RV rv = c->R->C_GetAttributeValue(real, hObject, pTemplate, ulCount);
    rv = fm_misreport_attributes(c, real, hObject, pTemplate, ulCount, given, rv);
    free(given);
    return rv;
}

CK_RV w_C_GetAttributeValue(CK_SESSION_HANDLE hSession, CK_OBJECT_HANDLE hObject,
                            CK_ATTRIBUTE_PTR pTemplate, CK_ULONG ulCount)
{
    SESSION_BASE(C_GetAttributeValue, (void)0,
                 get_attributes(&c, real, hObject, pTemplate, ulCount));
}

FM_SESSION_WRAPPER(C_SetAttributeValue, (CK_SESSION_HANDLE hSession, CK_OBJECT_HANDLE hObject,
                                         CK_ATTRIBUTE_PTR pTemplate, CK_ULONG ulCount),
                   (real, hObject, pTemplate, ulCount))

FM_SESSION_WRAPPER(C_FindObjectsInit, (CK_SESSION_HANDLE hSession, CK_ATTRIBUTE_PTR pTemplate,
                                       CK_ULONG ulCount),
                   (real, pTemplate, ulCount))

/* C_FindObjects forwarded, the count as a JWKE_FAULT_LENGTHS rule may
 * misreport it (the caller's buffer holds ulMaxObjectCount handles). */
static CK_RV find_objects(fm_call *c, CK_SESSION_HANDLE real, CK_OBJECT_HANDLE_PTR phObject,
                          CK_ULONG ulMaxObjectCount, CK_ULONG_PTR pulObjectCount)
{
    CK_RV rv = c->R->C_FindObjects(real, phObject, ulMaxObjectCount, pulObjectCount);
    return fm_misreport_output(c, phObject != NULL, pulObjectCount, ulMaxObjectCount, rv);
}

CK_RV w_C_FindObjects(CK_SESSION_HANDLE hSession, CK_OBJECT_HANDLE_PTR phObject,
                      CK_ULONG ulMaxObjectCount, CK_ULONG_PTR pulObjectCount)
{
    SESSION_BASE(C_FindObjects, (void)0,
                 find_objects(&c, real, phObject, ulMaxObjectCount, pulObjectCount));
}

FM_SESSION_ONLY_WRAPPER(C_FindObjectsFinal)
